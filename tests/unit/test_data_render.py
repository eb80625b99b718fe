"""Conversations rendered through the chat template: ids exactly as apply_chat_template gives them, and
the loss on every assistant turn (with its end-of-turn token), nothing else (engine/data/render.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data import chat_templates
from engine.data.formats import Conversation, Document
from engine.data.render import Renderer
from engine.errors import UserError
from engine.vocabulary import CHAT_TEMPLATES
from chat_helpers import CONVERSATIONS, QWEN_TEMPLATE, train_bpe

# The same layout as QWEN_TEMPLATE with generation markers around each reply: transformers' own
# assistant mask from it is the reference for the prefix-rendering mask of the template without them.
MARKED_QWEN = QWEN_TEMPLATE.replace(
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{% generation %}"
    "{{- message.content + '<|im_end|>\\n' }}{% endgeneration %}"
    "{%- elif message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}")


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a transformers tokenizer
    return train_bpe(tmp_path_factory.mktemp("tok"))


def conv(messages: list[dict]) -> Conversation:
    return Conversation(tuple(dict(m) for m in messages), tuple(m["role"] == "assistant" for m in messages))


def reference(tokenizer, messages: list[dict], template: str) -> tuple[list[int], list[int]]:  # noqa: ANN001
    out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["multi-turn+system", "one-turn", "another"])
def test_model_template_without_markers_matches_apply_chat_template(chat_tok, messages: list[dict]) -> None:
    template = chat_templates.resolve("auto", chat_tok)
    assert template.name == "model" and not template.has_markers
    encoded = Renderer(chat_tok, template).encode([conv(messages)])[0]
    plain = chat_tok.apply_chat_template(messages, tokenize=True)
    plain = plain["input_ids"] if isinstance(plain, dict) or hasattr(plain, "keys") else plain
    assert encoded.ids.tolist() == list(plain)  # exactly the ids the model is served with
    ids, mask = reference(chat_tok, messages, MARKED_QWEN)
    assert ids == list(plain) and encoded.mask.tolist() == mask  # every reply + <|im_end|>\n, nothing else
    im_end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    ends = [k for k, i in enumerate(ids) if i == im_end]
    n_replies = sum(m["role"] == "assistant" for m in messages)
    assert sum(mask[k] for k in ends) == n_replies  # the end-of-turn token of every reply is trained
    assert encoded.ids.tolist().count(im_end) == len(ends) and 0 < sum(mask) < len(mask)


def test_train_on_last_assistant_and_all(chat_tok) -> None:
    template = chat_templates.resolve("auto", chat_tok)
    c = conv(CONVERSATIONS[0])
    every = Renderer(chat_tok, template).encode([c])[0].mask
    last = Renderer(chat_tok, template, "last_assistant").encode([c])[0].mask
    both = Renderer(chat_tok, template, "all").encode([c])[0].mask
    assert 0 < last.sum() < every.sum() and both.all()
    split = len(every) - len(last)  # the last reply's tokens are trained in both
    assert (last[every == 0] == 0).all() and last.nonzero()[0][0] > every.nonzero()[0][0] and split >= 0


def test_a_base_tokenizer_given_a_named_template(tmp_path: Path) -> None:
    base = train_bpe(tmp_path / "base", special=("<|endoftext|>",), template=None)
    assert chat_templates.resolve("auto", base).name == "plain"
    template = chat_templates.resolve("chatml", base)
    n_before = len(base)
    added = chat_templates.apply(template, base)
    assert added == ["<|im_start|>", "<|im_end|>"] and len(base) == n_before + 2
    encoded = Renderer(base, template).encode([conv(CONVERSATIONS[0])])[0]
    ids, mask = reference(base, list(CONVERSATIONS[0]), template.source)
    assert encoded.ids.tolist() == ids and encoded.mask.tolist() == mask
    im_start = base.convert_tokens_to_ids("<|im_start|>")
    assert encoded.ids.tolist().count(im_start) == 5  # one real id a turn, not "<", "|", "im", ...
    assert base.chat_template == template.source  # saved with the tokenizer: the model is served with it


@pytest.mark.parametrize("name", [n for n in CHAT_TEMPLATES if n != "auto"])
def test_every_named_template_renders_and_masks_the_replies(tmp_path: Path, name: str) -> None:
    tok = train_bpe(tmp_path / "t", special=("<|endoftext|>",), template=None)
    template = chat_templates.resolve(name, tok)
    chat_templates.apply(template, tok)
    encoded = Renderer(tok, template).encode([conv(CONVERSATIONS[0])])[0]
    trained = tok.decode(encoded.ids[encoded.mask == 1].tolist())
    assert "The sky is blue on a clear day." in trained and "At night it looks black, with stars." in trained
    assert "What colour" not in trained and "one short sentence" not in trained
    prompt = tok.apply_chat_template(list(CONVERSATIONS[1][:1]), tokenize=False, add_generation_prompt=True)
    assert "Name a prime number." in prompt


def test_custom_pair_template_and_documents(chat_tok) -> None:
    template = chat_templates.resolve("Q: {prompt}\nA: {response}", chat_tok)
    encoded = Renderer(chat_tok, template).encode([conv(CONVERSATIONS[1])])[0]
    text = chat_tok.decode(encoded.ids.tolist())
    assert text == "Q: Name a prime number.\nA: Seven is prime.<|endoftext|>\n"
    assert chat_tok.decode(encoded.ids[encoded.mask == 1].tolist()) == "Seven is prime.<|endoftext|>"
    with pytest.raises(UserError, match="unknown template 'nope'"):
        chat_templates.resolve("nope", chat_tok)
    # documents: special-token text stays text in a plain document, is the token in pre-rendered chat
    renderer = Renderer(chat_tok, template)
    raw, marked = renderer.encode([Document("<|im_end|>"), Document("<|im_end|>", markup=True)])
    im_end, eos = chat_tok.convert_tokens_to_ids("<|im_end|>"), chat_tok.eos_token_id
    assert raw.ids.tolist()[-1] == eos and im_end not in raw.ids.tolist()[:-1] and len(raw.ids) > 2
    assert marked.ids.tolist() == [im_end, eos]


def test_named_templates_are_the_vocabulary() -> None:
    assert chat_templates.TEMPLATE_NAMES == CHAT_TEMPLATES
