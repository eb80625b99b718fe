"""Chat data for the data-path tests: a tiny Qwen2-style model whose tokenizer carries a ChatML template
(with special <|im_start|>/<|im_end|> tokens, like Qwen2.5-Instruct), a base tokenizer with no template,
and the same conversations written in the layouts people bring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen2.5-Instruct's template, shortened: a default system prompt, tool turns, no generation markers.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + "
    "'\\n</tool_response><|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "What colour is the sky?"},
     {"role": "assistant", "content": "The sky is blue on a clear day."},
     {"role": "user", "content": "And at night?"},
     {"role": "assistant", "content": "At night it looks black, with stars."}],
    [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven is prime."}],
    [{"role": "user", "content": "Translate 'bonjour'."}, {"role": "assistant", "content": "It means hello."}],
]


def words(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    vocab = "sky blue night stars prime seven hello answer question river stone light music".split()
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def train_bpe(folder: Path, *, special: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
              template: str | None = QWEN_TEMPLATE, eos: str = "<|endoftext|>", vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on generated text, saved in `folder` and loaded as transformers does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    texts = words(2000) + [m["content"] for conv in CONVERSATIONS for m in conv] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos)
    if template is not None:
        fast.chat_template = template
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def qwen2_model(folder: Path, tokenizer: Any, *, width: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Qwen2 causal LM with random weights, saved with `tokenizer` (a chat model's folder)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sharegpt(conv: list[dict[str, str]]) -> dict[str, Any]:
    names = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}


def many(n: int) -> list[list[dict[str, str]]]:
    """`n` conversations: the fixed ones, then generated single and two-turn ones."""
    out = list(CONVERSATIONS)
    texts = words(3 * n, seed=1)
    k = 0
    while len(out) < n:
        conv = [{"role": "user", "content": texts[k]}, {"role": "assistant", "content": texts[k + 1]}]
        if k % 3 == 0:
            conv += [{"role": "user", "content": texts[k + 2]}, {"role": "assistant", "content": texts[k]}]
        out.append(conv)
        k += 3
    return out


SLACK_USERS = [
    {"id": "U1", "name": "ann", "real_name": "Ann Lee", "profile": {"display_name": "annie", "real_name": "Ann Lee"}},
    {"id": "U2", "name": "bob", "profile": {"display_name": "", "real_name": "Bob Ray"}},
]


def slack_export(root: Path, days: int = 3) -> Path:
    """A Slack export: users.json and one channel of day files where ann answers bob, a join line among them."""
    channel = root / "general"
    channel.mkdir(parents=True)
    (root / "users.json").write_text(json.dumps(SLACK_USERS))
    t = 1_700_000_000
    texts = words(4 * days, seed=2)
    for d in range(days):
        day = [{"type": "message", "subtype": "channel_join", "user": "U2", "text": "<@U2> has joined",
                "ts": f"{t + d * 86400}.000100"}] if d == 0 else []
        for k in range(2):
            at = t + d * 86400 + 10 * (k + 1)
            day += [{"type": "message", "user": "U2", "text": texts[4 * d + 2 * k], "ts": f"{at}.000100"},
                    {"type": "message", "user": "U1", "text": texts[4 * d + 2 * k + 1], "ts": f"{at + 5}.000100"}]
        (channel / f"2023-11-{14 + d:02d}.json").write_text(json.dumps(day))
    return root
