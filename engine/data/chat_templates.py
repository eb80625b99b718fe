"""Chat templates: the model's own, or a named one for a base model that has none.

`data.template`:
- "auto": the tokenizer's own chat template; a tokenizer without one gets "plain" (and the report says so);
- a name from NAMED: that layout, written as a Jinja chat template with generation markers, set on the
  tokenizer (so the trained model is served with it); the special tokens it needs (<|im_start|>...)
  are added to the tokenizer, and the technique resizes the embeddings and trains those rows;
- a custom string with {prompt} and {response} (the former default was "### Prompt:\\n{prompt}\\n###
  Response:\\n{response}"): one prompt and one response, written as a template the same way.

Every named template marks the assistant's reply with {% generation %}, so the loss mask comes from
one render; a model's own template without the markers is masked by rendering prefixes
(engine/data/render.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.errors import UserError

_SYSTEM_FIRST = "{%- set loop_messages = messages[1:] if messages and messages[0].role == 'system' else messages -%}"

NAMED: dict[str, str] = {
    "chatml": (
        "{%- for m in messages -%}"
        "{%- if m.role == 'assistant' -%}{{ '<|im_start|>assistant\n' }}{% generation %}{{ m.content + '<|im_end|>' }}"
        "{% endgeneration %}{{ '\n' }}"
        "{%- else -%}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif -%}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"),
    "llama-3": (
        "{{ bos_token or '' }}{%- for m in messages -%}"
        "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' }}"
        "{%- if m.role == 'assistant' -%}{% generation %}{{ m.content | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{%- else -%}{{ m.content | trim + '<|eot_id|>' }}{%- endif -%}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{%- endif -%}"),
    "gemma": (
        _SYSTEM_FIRST + "{{ bos_token or '' }}{%- for m in loop_messages -%}"
        "{%- if m.role == 'assistant' -%}{{ '<start_of_turn>model\n' }}{% generation %}"
        "{{ m.content | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\n' }}"
        "{%- else -%}{{ '<start_of_turn>' + ('user' if m.role != 'tool' else 'tool') + '\n' }}"
        "{%- if loop.first and messages[0].role == 'system' -%}{{ messages[0].content | trim + '\n\n' }}{%- endif -%}"
        "{{ m.content | trim + '<end_of_turn>\n' }}{%- endif -%}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"),
    "alpaca": (
        _SYSTEM_FIRST + "{{ messages[0].content + '\n\n' if messages and messages[0].role == 'system' else "
        "'Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n' }}{%- for m in loop_messages -%}"
        "{%- if m.role == 'assistant' -%}{% generation %}{{ m.content + eos_token }}{% endgeneration %}{{ '\n\n' }}"
        "{%- else -%}{{ '### Instruction:\n' + m.content + '\n\n### Response:\n' }}{%- endif -%}{%- endfor -%}"),
    "vicuna": (
        _SYSTEM_FIRST + "{{ messages[0].content + ' ' if messages and messages[0].role == 'system' else '' }}"
        "{%- for m in loop_messages -%}"
        "{%- if m.role == 'assistant' -%}{% generation %}{{ m.content + eos_token }}{% endgeneration %}"
        "{%- else -%}{{ 'USER: ' + m.content + ' ASSISTANT: ' }}{%- endif -%}{%- endfor -%}"),
    "zephyr": (
        "{%- for m in messages -%}"
        "{%- if m.role == 'assistant' -%}{{ '<|assistant|>\n' }}{% generation %}{{ m.content + eos_token }}"
        "{% endgeneration %}{{ '\n' }}"
        "{%- else -%}{{ '<|' + m.role + '|>\n' + m.content + eos_token + '\n' }}{%- endif -%}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"),
    "mistral": (
        _SYSTEM_FIRST + "{{ bos_token or '' }}{%- for m in loop_messages -%}"
        "{%- if m.role == 'assistant' -%}{% generation %}{{ m.content + eos_token }}{% endgeneration %}"
        "{%- else -%}{{ '[INST] ' }}{%- if loop.first and messages[0].role == 'system' -%}"
        "{{ messages[0].content + '\n\n' }}{%- endif -%}{{ m.content + ' [/INST]' }}{%- endif -%}{%- endfor -%}"),
}
# The special tokens each named layout needs as single tokens, and the one that ends an assistant turn.
ADDED_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama-3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
}
END_OF_TURN = {"chatml": "<|im_end|>", "llama-3": "<|eot_id|>", "gemma": "<end_of_turn>"}
PLAIN = "### Prompt:\n{prompt}\n### Response:\n{response}"  # the layout of a tokenizer with no template
TEMPLATE_NAMES = ("auto", "plain", *NAMED)  # engine/vocabulary.py CHAT_TEMPLATES, checked by a test


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "model" (the tokenizer's own), a NAMED key, "plain" or "custom"
    source: str  # the Jinja text
    added_tokens: tuple[str, ...] = ()  # special tokens the tokenizer must gain
    end_of_turn: str = ""  # a token that ends a reply (generation stops there), when the layout adds one

    @property
    def has_markers(self) -> bool:
        return "{% generation %}" in self.source or "{%- generation %}" in self.source


def from_pairs(template: str) -> str:
    """A {prompt}/{response} string as a Jinja template: system, then each prompt and its reply."""
    head, tail = template.split("{response}")
    pre, _, post = head.partition("{prompt}") if "{prompt}" in head else ("", "", head)
    lit = json.dumps  # a JSON string is a valid Jinja string literal
    user = f"{lit(pre)} + m.content + {lit(post)}" if "{prompt}" in head else f"m.content + {lit(post)}"
    return ("{%- for m in messages -%}"
            "{%- if m.role == 'system' -%}{{ m.content + '\n\n' }}"
            "{%- elif m.role == 'assistant' -%}{% generation %}{{ m.content + " + lit(tail) + " + eos_token }}"
            "{% endgeneration %}{{ '\n' }}"
            "{%- else -%}{{ " + user + " }}{%- endif -%}{%- endfor -%}")


def resolve(setting: str, tokenizer: Any) -> ChatTemplate:
    """The template `data.template` names for this tokenizer."""
    if setting in ("auto", "") and getattr(tokenizer, "chat_template", None):
        own = tokenizer.chat_template
        if isinstance(own, dict):  # several named templates: the default one
            own = own.get("default") or next(iter(own.values()))
        return ChatTemplate("model", own)
    if setting in ("auto", "", "plain"):
        return ChatTemplate("plain", from_pairs(PLAIN))
    if setting in NAMED:
        return ChatTemplate(setting, NAMED[setting], ADDED_TOKENS.get(setting, ()), END_OF_TURN.get(setting, ""))
    if "{response}" in setting:
        return ChatTemplate("custom", from_pairs(setting))
    raise UserError(f"data.template: unknown template {setting!r}: choose auto (the model's own), "
                    f"{', '.join(TEMPLATE_NAMES[1:])}, or write one with {{prompt}} and {{response}}",
                    field="data.template")


def apply(template: ChatTemplate, tokenizer: Any) -> list[str]:
    """Set the template on the tokenizer and add the special tokens it needs; the tokens that were new.

    The caller (a technique's setup) resizes the model's embeddings when the list is not empty.
    """
    have = tokenizer.get_vocab()
    new = [t for t in template.added_tokens if t not in have]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if template.name != "model":
        tokenizer.chat_template = template.source
    return new
