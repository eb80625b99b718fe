"""The layouts people bring their examples in, detected from a row's fields and read as conversations.

A row becomes either a `Conversation` (a list of {role, content} messages, the OpenAI/HF layout that
chat templates take) or a `Document` (text with an optional masked prompt: plain text, the book's
label layout). Layouts (`data.format`; "auto" picks one from the first rows' fields):

- messages: `messages` = [{role: system|user|assistant|tool, content, ...}]; OpenAI's fine-tuning files
  (an assistant message with `weight: 0` is context, not trained; `tools` passed to the template);
- sharegpt: `conversations` = [{from: human|gpt|system|function_call|observation, value}], as
  LLaMA-Factory maps them (function_call: the assistant's call, observation: the tool's answer), with
  optional `system` and `tools` fields;
- alpaca: instruction, input, output (+ optional system, history = [[prompt, response], ...]); `input`
  joins the instruction after a blank line, as Alpaca's own prompt sets it under the instruction;
- prompt_response: one prompt and one response column, under their common names (PAIR_NAMES) or
  named by data.prompt_column / data.response_column (+ data.system_column);
- chosen: preference rows trained as supervised data on their chosen answer (the user asks for it);
- preference: pairs for the preference techniques (dpo, orpo pick it themselves): prompt + chosen +
  rejected, each a string or a message list (TRL's layouts, also chosen/rejected as whole conversations
  sharing the prompt), or LLaMA-Factory's conversations (ShareGPT or OpenAI style) + chosen + rejected
  messages, or instruction (+ input) + chosen + rejected; read as a `Pair` of two conversations whose
  trained turns are the answers only;
- label: data.text_column + data.label_column, the book's "<column> : <text> Label : <label>" (5.3);
- text: one text column (data.text_column, or the first of TEXT_COLUMNS): documents, trained whole.

Preference rows (prompt/chosen/rejected, or conversations + chosen + rejected) are named as preference
data and refused for supervised training unless data.format = "chosen".

    layout = detect(first_rows, data)          # a Layout: format and the columns it reads
    item = read_row(layout, row.values)        # Conversation | Document | None (empty, skipped); BadRow raised
    (preference rows: engine/data/preference_rows.py read_pair, a Pair)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.data.rows import is_missing
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.spec import DataSpec

TEXT_COLUMNS = ("text", "content", "body", "message", "document")
# (prompt, response) column names, most specific first.
PAIR_NAMES = (("prompt", "completion"), ("prompt", "response"), ("instruction", "response"),
              ("question", "answer"), ("query", "response"), ("input", "output"), ("prompt", "output"),
              ("instruction", "output"), ("context", "response"), ("question", "response"))
ROLES = ("system", "user", "assistant", "tool")
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "bot": "assistant", "model": "assistant", "tool": "tool", "function": "tool", "ipython": "tool",
              "observation": "tool", "function_call": "assistant", "developer": "system"}
CHAT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_response", "chosen", "preference", "slack")
PROMPT_COLUMNS = ("prompt", "conversations", "messages", "instruction", "question")  # a pair's prompt, if any


class BadRow(Exception):
    """A row that cannot be used: the message says what is wrong in it (its place is added by the caller)."""


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, Any], ...]  # {role, content, ...}, what apply_chat_template takes
    trained: tuple[bool, ...]  # per message: an assistant turn whose tokens carry the loss
    tools: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class Document:
    text: str  # the whole text
    prompt: str = ""  # the leading part of `text` with no loss on it
    ends: bool = True  # False: the document goes on in the next piece (no eos in between)
    markup: bool = False  # special-token text in it is the special token (a table's pre-rendered chat)

    def __post_init__(self) -> None:
        if not self.text.startswith(self.prompt):
            raise ValueError("Document.prompt must be the start of Document.text")

    @property
    def completion(self) -> str:
        return self.text[len(self.prompt):]


@dataclass(frozen=True)
class Pair:
    """A preference pair: the same prompt answered two ways; only the answers' turns are trained."""
    chosen: Conversation
    rejected: Conversation


@dataclass(frozen=True)
class Layout:
    """What the rows hold and which columns are read; `columns` maps a role in the layout to a column."""
    format: str
    columns: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        named = ", ".join(f"{k}={v}" for k, v in self.columns.items())
        return f"{self.format} ({named})" if named else self.format


def _is_messages(value: Any, keys: tuple[str, str]) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and all(k in value[0] for k in keys)


def detect(rows: Sequence[dict[str, Any]], data: DataSpec, where: str) -> Layout:
    """The layout of these first rows, as data.format and the column settings say or the fields show."""
    if not rows:
        raise UserError(f"{where}: no rows", field="data.path")
    first = rows[0]
    have = list(first)
    wanted = data.format if data.format not in ("auto", "hub") else ""
    if data.label_column:
        text = data.text_column or _guess_text(have, where)
        return _checked(Layout("label", {"text": text, "label": data.label_column}), have, where)
    if data.prompt_column:
        cols = {"prompt": data.prompt_column, "response": data.response_column}
        if data.system_column:
            cols["system"] = data.system_column
        return _checked(Layout("prompt_response", cols), have, where)
    pairs = bool(getattr(data, "pairs", False))  # the dpo/orpo techniques read pairs (DataSource.pairs)
    if wanted == "preference" and not pairs:
        raise UserError(f"{where}: data.format = \"preference\" trains with technique dpo or orpo; for supervised "
                        "training on the chosen answers set data.format = \"chosen\"", field="data.format")
    if pairs:
        if "chosen" not in first or "rejected" not in first:
            raise UserError(f"{where}: preference tuning needs chosen and rejected answers (columns chosen, rejected "
                            f"and a prompt); the row has {', '.join(have)}", field="data.format")
        cols = {"chosen": "chosen", "rejected": "rejected"}
        prompt = next((c for c in PROMPT_COLUMNS if c in first), None)
        if prompt is not None:
            cols["prompt"] = prompt
        return Layout("preference", cols | _optional(first, "system", "input", "tools"))
    if "chosen" in first and "rejected" in first and wanted != "chosen":
        raise UserError(f"{where} holds preference data (chosen and rejected answers: {', '.join(have)}), not "
                        "supervised examples; train it with a preference technique (dpo, orpo), or set "
                        "data.format = \"chosen\" to fine-tune on the chosen answers", field="data.format")
    if wanted == "chosen" or ("chosen" in first and "rejected" in first):
        cols = {"chosen": "chosen"}
        if "prompt" in first:
            cols["prompt"] = "prompt"
        return _checked(Layout("chosen", cols), have, where)
    column = data.messages_column
    if wanted in ("messages", "sharegpt") or column or not wanted:
        for name in ([column] if column else ["messages", "conversations", "conversation", "chat", "dialog"]):
            value = first.get(name)
            if _is_messages(value, ("role", "content")) and wanted != "sharegpt":
                return Layout("messages", {"messages": name} | _optional(first, "tools"))
            if _is_messages(value, ("from", "value")) and wanted != "messages":
                return Layout("sharegpt", {"messages": name} | _optional(first, "system", "tools"))
        if wanted in ("messages", "sharegpt") or column:
            name = column or ("messages" if wanted == "messages" else "conversations")
            raise UserError(f"{where}: expected a {name!r} list of {{role, content}} (or {{from, value}}) messages; "
                            f"the row has {', '.join(have)}", field="data.messages_column")
    if wanted in ("alpaca", "") and "instruction" in first and "output" in first:
        return Layout("alpaca", {"instruction": "instruction", "output": "output"}
                      | _optional(first, "input", "system", "history"))
    if wanted in ("prompt_response", ""):
        for prompt, response in PAIR_NAMES:
            if prompt in first and response in first:
                return Layout("prompt_response", {"prompt": prompt, "response": response} | _optional(first, "system"))
        if wanted:
            raise UserError(f"{where}: which columns hold the prompt and the response? set data.prompt_column and "
                            f"data.response_column (columns: {', '.join(have)})", field="data.prompt_column")
    if wanted in ("text", ""):
        text = data.text_column or _guess_text(have, where, chat_hint=not wanted)
        return _checked(Layout("text", {"text": text}), have, where)
    raise UserError(f"{where}: the rows do not hold {wanted} data (columns: {', '.join(have)}); set data.format = "
                    "\"auto\" to detect it", field="data.format")


def _optional(row: dict[str, Any], *names: str) -> dict[str, str]:
    return {n: n for n in names if n in row}


def _guess_text(have: list[str], where: str, chat_hint: bool = False) -> str:
    guess = next((c for c in TEXT_COLUMNS if c in have), None)
    if guess is None:
        hint = ("; for instruction data name the prompt and response columns (data.prompt_column, "
                "data.response_column)") if chat_hint else ""
        raise UserError(f"{where}: no column holds text or a conversation; set data.text_column or "
                        f"data.format (columns: {', '.join(have) or 'none'}){hint}", field="data.text_column")
    return guess


def _checked(layout: Layout, have: list[str], where: str) -> Layout:
    for name in layout.columns.values():
        if name not in have:
            raise UserError(f"{where} has no column {name!r}; it has {', '.join(have) or 'none'}",
                            field="data.text_column")
    return layout


# --- a row as a conversation or a document ------------------------------------------------------------


def read_row(layout: Layout, values: dict[str, Any]) -> Conversation | Document | None:
    """The row's example; None for an empty text document (skipped). Raises BadRow saying what is wrong."""
    fmt, cols = layout.format, layout.columns
    if fmt == "text":
        text = _text(values, cols["text"])
        return Document(text, markup=True) if text else None
    if fmt == "label":
        text, label = values.get(cols["text"], _ABSENT), values.get(cols["label"], _ABSENT)
        text = _text(values, cols["text"])
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise BadRow(f"field {cols['label']!r} must be text or a number, got {describe(label)}")
        prompt = f"{cols['text']} : {text} Label : "
        return Document(prompt + str(label), prompt)
    if fmt == "messages":
        raw = values.get(cols["messages"], _ABSENT)
        return _conversation(_message_list(raw, cols["messages"], "role", "content"), _tools(values.get("tools")))
    if fmt == "sharegpt":
        raw = values.get(cols["messages"], _ABSENT)
        messages = _message_list(raw, cols["messages"], "from", "value")
        system = values.get("system")
        if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        return _conversation(messages, _tools(values.get("tools")))
    if fmt == "alpaca":
        instruction, output = _text(values, cols["instruction"]), _text(values, cols["output"])
        extra = values.get("input")
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        messages = _system(values.get("system"))
        for pair in _history(values.get("history")):
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        return _conversation(messages)
    if fmt == "prompt_response":
        messages = _system(values.get(cols["system"]) if "system" in cols else None)
        messages += [{"role": "user", "content": _text(values, cols["prompt"])},
                     {"role": "assistant", "content": _text(values, cols["response"])}]
        return _conversation(messages)
    if fmt == "chosen":
        chosen = values.get("chosen")
        if isinstance(chosen, list):  # conversations + chosen + rejected: the chosen turn(s) continue them
            head = values.get("prompt", values.get("conversations", []))
            if isinstance(head, str):
                head = [{"role": "user", "content": head}]
            messages = _message_list(head, "prompt", "role", "content") if head else []
            return _conversation(messages + _message_list(chosen, "chosen", "role", "content"))
        return _conversation([{"role": "user", "content": _text(values, "prompt")},
                              {"role": "assistant", "content": _text(values, "chosen")}])
    raise ValueError(f"unknown layout {fmt!r}")  # preference rows: engine/data/preference_rows.py


class _Absent:
    def __repr__(self) -> str:
        return "missing"


_ABSENT: Any = _Absent()


def describe(value: Any) -> str:
    """How a bad field reads in a message: missing, null, or its type and a short excerpt."""
    if value is _ABSENT or is_missing(value):
        return "missing"
    if value is None:
        return "null"
    kind = {dict: "an object", list: "an array", bool: "a boolean", str: "a string", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind} {text[:30] + '...' if len(text) > 30 else text}"


def _text(values: dict[str, Any], name: str) -> str:
    value = values.get(name, _ABSENT)
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be text, got {describe(value)}")
    return value


def _system(value: Any) -> list[dict[str, Any]]:
    return [{"role": "system", "content": value}] if isinstance(value, str) and value.strip() else []


def _history(value: Any) -> list[tuple[str, str]]:
    if value in (None, "", []):
        return []
    if not isinstance(value, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                              and all(isinstance(s, str) for s in p) for p in value):
        raise BadRow(f"field 'history' must be a list of [prompt, response] pairs, got {describe(value)}")
    return [(p[0], p[1]) for p in value]


def _tools(value: Any) -> tuple[dict[str, Any], ...] | None:
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow("field 'tools' is not valid JSON") from None
    if value in (None, "", []):
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRow(f"field 'tools' must be a list of tool definitions, got {describe(value)}")
    return tuple(value)


REASONING_PARTS = ("reasoning", "thinking")  # a part the model thought before replying (LLaMA-Factory v1)


def _content(value: Any, where: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(a message's text, its reasoning, its tool calls): a string, or a list of parts (OpenAI's {"type",
    "text"} or LLaMA-Factory's {"type", "value"}) whose text parts are joined; reasoning parts go apart, to
    the field chat templates read (`reasoning_content`), and `tool_call` parts ({"name", "arguments"} as
    JSON) to `tool_calls` as transformers' templates take them."""
    if isinstance(value, str):
        return value, "", []
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts, thoughts, calls = [], [], []
        for part in value:
            kind, text = part.get("type", "text"), part.get("text", part.get("value"))
            if kind == "tool_call" and isinstance(text, str):
                calls.append({"type": "function", "function": _tool_call(text, where)})
                continue
            if kind not in ("text", *REASONING_PARTS) or not isinstance(text, str):
                raise BadRow(f"{where} holds a {kind!r} part: only text is trained here (not images or audio)")
            (texts if kind == "text" else thoughts).append(text)
        return "".join(texts), "".join(thoughts), calls
    if value is None:
        return "", "", []
    raise BadRow(f"{where} content must be text, got {describe(value)}")


def _tool_call(text: str, where: str) -> dict[str, Any]:
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise BadRow(f"{where} holds a tool_call part that is not JSON with a name: {text[:40]!r}")
    return {"name": call["name"], "arguments": call.get("arguments", {})}


def _message_list(raw: Any, name: str, role_key: str, content_key: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise BadRow(f"field {name!r} must be a non-empty list of messages, got {describe(raw)}")
    messages: list[dict[str, Any]] = []
    for k, item in enumerate(raw, 1):
        if not isinstance(item, dict) or role_key not in item:
            raise BadRow(f"message {k} of {name!r} has no {role_key!r} (the file mixes layouts?): {describe(item)}")
        given = item[role_key]
        role = ROLE_NAMES.get(given) if isinstance(given, str) else None
        if role is None:
            raise BadRow(f"message {k} has an unknown role {given!r}; known: {', '.join(sorted(ROLE_NAMES))}")
        weights = ("weight", "loss_weight")  # OpenAI's name, LLaMA-Factory's
        message = {key: value for key, value in item.items() if key not in (role_key, content_key, *weights)}
        message["role"] = role
        message["content"], thought, calls = _content(item.get(content_key), f"message {k}")
        if thought:
            message["reasoning_content"] = thought
        if calls:
            message["tool_calls"] = [*message.get("tool_calls", []), *calls]
        for name in weights:
            if name in item:
                if item[name] not in (0, 1) or isinstance(item[name], bool):
                    raise BadRow(f"message {k}: {name} must be 0 or 1, got {item[name]!r}")
                message["_weight"] = int(item[name])
        messages.append(message)
    return messages


def _conversation(messages: list[dict[str, Any]], tools: tuple[dict[str, Any], ...] | None = None) -> Conversation:
    """Checked: some assistant turn, none empty, not ending on a user's turn."""
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("the conversation has no assistant turn: nothing to learn")
    for k, m in enumerate(messages, 1):
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise BadRow(f"message {k} is an empty assistant turn")
    if messages[-1]["role"] == "user":
        raise BadRow("the conversation ends on a user turn with no answer; end it on the assistant's reply")
    trained = tuple(m["role"] == "assistant" and m.pop("_weight", 1) == 1 for m in messages)
    for m in messages:
        m.pop("_weight", None)
    return Conversation(tuple(messages), trained, tools)
