"""Examples as the ids and loss mask the model trains on: conversations through the chat template.

A conversation is rendered by its chat template (engine/data/chat_templates.py) to text and tokenized
the way `tokenizer.apply_chat_template(messages, tokenize=True)` does (no added bos/eos, special-token
text as the special token), so the ids are exactly those the model is served with. The loss mask:
- a template with {% generation %} markers: the characters inside them (one render);
- else: turn boundaries found by rendering prefixes: assistant turn i spans from the end of
  render(messages[:i], add_generation_prompt=True) to the end of render(messages[:i+1]); where a template
  renders earlier turns differently (a prefix that is not a prefix), the reply's content is found in
  the text and its end-of-turn token, when one follows, trained with it;
- `train_on`: "assistant" (every trained assistant turn), "last_assistant", or "all".

A document (plain text, the label layout) keeps the former rule: its prompt and completion are
encoded apart with special-token text left as text, then an eos. A table's text column is the
exception: it is taken as pre-rendered chat, so special-token text in it becomes the special token.

    renderer = Renderer(tokenizer, template, train_on="assistant")
    encoded = renderer.encode([conversation_or_document, ...])   # [Encoded(ids, mask), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.data.chat_templates import ChatTemplate
from engine.data.formats import Conversation, Document
from engine.errors import UserError

if TYPE_CHECKING:
    import numpy as np


class RenderError(Exception):
    """The template could not render a conversation (an unknown role for it, a raise in the template);
    `index` is its place in the batch given to Renderer.encode."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int64 token ids
    mask: np.ndarray  # uint8: 1 where the token is a trained target


def _backend(tokenizer: Any, special_text: bool) -> Any:
    """A private copy of the fast tokenizer's Rust backend, without truncation or padding."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("chat data needs a fast (Rust) tokenizer; this model's tokenizer is a slow one",
                        field="tokenizer")
    rust = Tokenizer.from_str(backend.to_str())
    rust.no_truncation()
    rust.no_padding()
    rust.encode_special_tokens = special_text  # True: "<|im_end|>" written in text stays text
    return rust


FRAME_CHECKS = 16  # conversations checked both ways before the one-render way is trusted for a source
_PROBE_USER, _PROBE_REPLY = "Pq7 probe question", "Rz9 probe answer"


class Renderer:
    """Conversations and documents to Encoded, in batches (one Rust call per batch, all cores)."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, train_on: str = "assistant") -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.train_on = train_on
        self._chat = _backend(tokenizer, special_text=False)
        self._plain = _backend(tokenizer, special_text=True)
        # What templates read besides the messages (bos_token, eos_token, ...), as apply_chat_template passes.
        self._context = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        self.eos = tokenizer.eos_token_id
        self._compiled: Any = None  # a template without markers, rendered directly (transformers' wrapper is slow)
        if not template.has_markers:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self._compiled = _compile_jinja_template(template.source)
        # The reply's frame learned from a probe conversation (header before, end-of-turn after), so a reply is
        # found in one render instead of two prefix renders a turn; checked against them on the first few.
        self._frame = self._probe_frame() if not template.has_markers else None
        self._checks_left = FRAME_CHECKS

    # -- rendering -----------------------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, Any]], tools: Any = None, generation_prompt: bool = False
               ) -> tuple[str, list[tuple[int, int]]]:
        """The text and the character spans inside generation markers."""
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            texts, spans = render_jinja_template([list(messages)], tools=list(tools) if tools else None,
                                                 chat_template=self.template.source,
                                                 return_assistant_tokens_mask=self.template.has_markers,
                                                 add_generation_prompt=generation_prompt, **self._context)
        except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError, templates raise their own
            raise RenderError(f"the chat template cannot render this conversation: {exc}") from None
        return texts[0], list(spans[0]) if spans else []

    def _text(self, messages: Sequence[dict[str, Any]], tools: Any = None, generation_prompt: bool = False) -> str:
        """The rendered text alone: directly through the compiled template where it is safe."""
        if self._compiled is None or tools or any(len(m) != 2 for m in messages):
            return self.render(messages, tools, generation_prompt)[0]
        try:
            return self._compiled.render(messages=list(messages), tools=None, documents=None,
                                         add_generation_prompt=generation_prompt, **self._context)
        except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError, templates raise their own
            raise RenderError(f"the chat template cannot render this conversation: {exc}") from None

    def _probe_frame(self) -> tuple[str, str] | None:
        """(the text before a reply, the text after it) as the template writes them, or None if it cannot tell."""
        user = [{"role": "user", "content": _PROBE_USER}]
        try:
            asked, head = self._text(user), self._text(user, generation_prompt=True)
            whole = self._text([*user, {"role": "assistant", "content": _PROBE_REPLY}])
        except RenderError:
            return None
        if not (head.startswith(asked) and whole.startswith(head + _PROBE_REPLY)) or len(head) == len(asked):
            return None
        return head[len(asked):], whole[len(head) + len(_PROBE_REPLY):]

    def _framed_spans(self, conv: Conversation, text: str, assistant: list[int]
                      ) -> list[tuple[int, tuple[int, int]]] | None:
        """The replies found by their frame in one render, or None where one is not found as framed."""
        assert self._frame is not None
        header, footer = self._frame
        turns, cursor = [], 0
        for k in assistant:
            framed = header + conv.messages[k]["content"] + footer
            at = text.find(framed, cursor)
            if at < 0:
                return None
            start, cursor = at + len(header), at + len(framed)
            turns.append((k, (start, cursor)))
        return turns

    def spans(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The full text and the character spans that carry the loss."""
        if self.template.has_markers:
            text, marked = self.render(conv.messages, conv.tools)
        else:
            text, marked = self._text(conv.messages, conv.tools), []
        if self.train_on == "all":
            return text, [(0, len(text))]
        assistant = [k for k, m in enumerate(conv.messages) if m["role"] == "assistant"]
        if self.template.has_markers and len(marked) == len(assistant):
            turns = list(zip(assistant, marked))
        else:
            framed = self._framed_spans(conv, text, assistant) if self._frame is not None else None
            if framed is None or self._checks_left > 0:
                turns = self._turn_spans(conv, text, assistant)
                if framed is not None:
                    self._checks_left -= 1
                    if framed != turns:  # the template frames replies in more than one way: prefixes always
                        self._frame = None
            else:
                turns = framed
        trained = [(k, span) for k, span in turns if conv.trained[k]]
        if self.train_on == "last_assistant":
            trained = trained[-1:]
        return text, [span for _, span in trained]

    def _turn_spans(self, conv: Conversation, text: str, assistant: list[int]) -> list[tuple[int, tuple[int, int]]]:
        turns: list[tuple[int, tuple[int, int]]] = []
        cursor = 0
        for k in assistant:
            head = self._text(conv.messages[:k], conv.tools, generation_prompt=True) if k else ""
            upto = text if k + 1 == len(conv.messages) else self._text(conv.messages[:k + 1], conv.tools)
            if text.startswith(upto) and upto.startswith(head) and len(head) >= cursor:
                start, end = len(head), len(upto)
            else:  # the template renders this turn differently in a prefix: find the reply itself
                content = conv.messages[k]["content"]
                start = text.find(content, cursor) if content else -1
                if start < 0:
                    raise RenderError(f"cannot find assistant turn {k + 1} in the rendered conversation; "
                                      "set data.train_on = \"all\" or data.template to a named template")
                end = start + len(content)
                end += self._end_of_turn_after(text, end)
            turns.append((k, (start, end)))
            cursor = end
        return turns

    def _end_of_turn_after(self, text: str, at: int) -> int:
        """The length of the end-of-turn token at `at` (eos, or a special token the reply ends with), else 0."""
        for token in filter(None, [self.template.end_of_turn, self.tokenizer.eos_token,
                                   *getattr(self.tokenizer, "all_special_tokens", [])]):
            if text.startswith(token, at):
                return len(token)
        return 0

    # -- encoding ------------------------------------------------------------------------------------

    def encode(self, items: Sequence[Conversation | Document]) -> list[Encoded]:
        """The ids and mask of every item, in order. RenderError names the first that cannot render."""
        import numpy as np

        chats = []
        for i, item in enumerate(items):
            if isinstance(item, Conversation):
                try:
                    chats.append((i, *self.spans(item)))
                except RenderError as exc:
                    raise RenderError(str(exc), i) from None
        docs = [(i, item) for i, item in enumerate(items) if isinstance(item, Document)]
        out: list[Encoded | None] = [None] * len(items)
        if chats:
            encodings = self._chat.encode_batch([text for _, text, _ in chats], add_special_tokens=False)
            for (i, _, spans), enc in zip(chats, encodings):
                ids = np.asarray(enc.ids, dtype=np.int64)
                out[i] = Encoded(ids, _span_mask(np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), spans))
        if docs:
            plain = [(i, d) for i, d in docs if not d.markup]
            marked = [(i, d) for i, d in docs if d.markup]
            encodings = [*self._plain.encode_batch([t for _, d in plain for t in (d.prompt, d.completion)],
                                                   add_special_tokens=False),
                         *self._chat.encode_batch([t for _, d in marked for t in (d.prompt, d.completion)],
                                                  add_special_tokens=False)]
            for k, (i, doc) in enumerate(plain + marked):
                prompt, completion = encodings[2 * k].ids, encodings[2 * k + 1].ids
                tail = [self.eos] if doc.ends and self.eos is not None else []
                ids = np.asarray([*prompt, *completion, *tail], dtype=np.int64)
                mask = np.zeros(len(ids), np.uint8)
                mask[len(prompt):] = 1
                out[i] = Encoded(ids, mask)
        return out  # type: ignore[return-value]


def _span_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """1 for every token that overlaps a span (as apply_chat_template's assistant mask does)."""
    import numpy as np

    mask = np.zeros(len(offsets), np.uint8)
    for start, end in spans:
        mask[(offsets[:, 1] > start) & (offsets[:, 0] < end)] = 1
    return mask
