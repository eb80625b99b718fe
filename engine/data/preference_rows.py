"""A preference row read as a `Pair` (engine/data/formats.py's preference layout): prompt + chosen and prompt +
rejected, two conversations whose trained turns are the answers only.

The prompt is a string (with Alpaca's `input` joined to an `instruction`), a message list ({role, content} or
ShareGPT's {from, value}), or absent: then chosen and rejected are whole conversations and their common first
messages are the prompt (TRL's implicit prompt). Answers are a string, one message (LLaMA-Factory's
`chosen: {from: gpt, value}`) or a message list; answers that repeat the prompt's turns
(HuggingFaceH4/ultrafeedback_binarized) keep only what follows them.

    pair = read_pair(layout, row.values)    # Pair; BadRow raised saying what is wrong
"""

from __future__ import annotations

from typing import Any

from engine.data.formats import _ABSENT, BadRow, Conversation, Layout, Pair, _message_list, _tools, describe


def read_pair(layout: Layout, values: dict[str, Any]) -> Pair:
    return _pair(layout.columns, values)


def _answer(value: Any, name: str) -> list[dict[str, Any]]:
    """A pair's answer: text, one message ({role, content} or {from, value}), or a list of messages."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(f"field {name!r} is empty")
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = ("from", "value") if "from" in value[0] else ("role", "content")
        return _message_list(value, name, *keys)
    raise BadRow(f"field {name!r} must be text or a list of messages, got {describe(value)}")


def _prompt(cols: dict[str, str], values: dict[str, Any]) -> list[dict[str, Any]]:
    name = cols.get("prompt")
    raw = values.get(name, _ABSENT) if name else None
    if raw is None:
        return []
    if isinstance(raw, str):
        extra = values.get("input") if name == "instruction" else None  # Alpaca's input joins the instruction
        text = f"{raw}\n\n{extra}" if isinstance(extra, str) and extra.strip() else raw
        messages = [{"role": "user", "content": text}]
    elif isinstance(raw, list) and raw and isinstance(raw[0], dict):
        messages = _message_list(raw, name, *(("from", "value") if "from" in raw[0] else ("role", "content")))
    else:
        raise BadRow(f"field {name!r} must be text or a list of messages, got {describe(raw)}")
    system = values.get("system")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _pair(cols: dict[str, str], values: dict[str, Any]) -> Pair:
    """Prompt + chosen and prompt + rejected; without a prompt column, chosen and rejected are whole
    conversations and their common first messages are the prompt (TRL's implicit prompt)."""
    prompt = _prompt(cols, values)
    chosen = _answer(values.get("chosen", _ABSENT), "chosen")
    rejected = _answer(values.get("rejected", _ABSENT), "rejected")
    if not prompt:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise BadRow("no prompt: give a prompt column, or chosen and rejected conversations that begin alike")
    else:  # answers that repeat the prompt's turns (HuggingFaceH4/ultrafeedback_binarized): the rest is the answer
        k = len(prompt)
        if len(chosen) > k and len(rejected) > k and chosen[:k] == prompt and rejected[:k] == prompt:
            chosen, rejected = chosen[k:], rejected[k:]
    if prompt[-1]["role"] == "assistant":
        raise BadRow("the prompt ends on an assistant turn: the answers must follow a user turn")
    tools = _tools(values.get("tools"))
    return Pair(_answered(prompt, chosen, "chosen", tools), _answered(prompt, rejected, "rejected", tools))


def _answered(prompt: list[dict[str, Any]], answer: list[dict[str, Any]], name: str,
              tools: tuple[dict[str, Any], ...] | None) -> Conversation:
    if not any(m["role"] == "assistant" for m in answer):
        raise BadRow(f"the {name} answer has no assistant turn")
    for m in answer:
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise BadRow(f"the {name} answer is empty")
        m.pop("_weight", None)
    messages = [{k: v for k, v in m.items() if k != "_weight"} for m in prompt] + answer
    trained = tuple([False] * len(prompt) + [m["role"] == "assistant" for m in answer])
    return Conversation(tuple(messages), trained, tools)
