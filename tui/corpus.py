"""The training data as the wizard sees it: the source the Data step's settings describe, what was detected
(format, columns, Slack users), the first examples as trained, and the token count with the run's tokenizer.
Headless: the Textual step and --plain share it. Nothing heavy at import: engine modules load inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tui.wizard import Choices

PREVIEW_LINES = 8
PREVIEW_EXAMPLES = 3
# The column roles the user can map (engine.spec.DataSpec's <role>_column settings), and the Choices attribute of each.
ROLES = {"text": "text_column", "messages": "messages_column", "prompt": "prompt_column",
         "response": "response_column", "system": "system_column", "label": "label_column"}


@dataclass(frozen=True)
class Corpus:
    files: int
    bytes: int
    kind: str  # text, table, slack, hub (engine.data.sources.DataSource.kind)
    format: str = "text"  # the layout: messages, sharegpt, alpaca, prompt_response, text, slack...
    source: str = ""  # DataSource.describe(): the layout and where it was read from
    columns: dict[str, str] = field(default_factory=dict)  # layout().columns: role -> column
    slack_users: tuple[tuple[str, str, int], ...] = ()  # (id, name, messages), most messages first

    @property
    def is_chat(self) -> bool:
        from engine.data.formats import CHAT_FORMATS

        return self.format in CHAT_FORMATS


def make_source(c: Choices, dataset: str | None = None, pairs: bool | None = None) -> Any:
    """engine.data.sources.DataSource for the Data step's settings (stdlib, a path, or a cached Hub dataset id).
    `pairs`: read preference pairs (dpo, orpo); None: when the rows are preference rows, so that they preview
    (the token count, which knows the technique, refuses them for supervised training)."""
    from dataclasses import replace

    from engine.data.sources import DataSource
    from engine.errors import UserError
    from engine.estimate.data_size import source_for

    dataset = c.dataset if dataset is None else dataset
    if dataset == "stdlib":
        return DataSource("stdlib")
    options = {k: v for k, v in c.data_settings().items() if k != "text_column"}
    if pairs is None:
        from engine.vocabulary import PREFERENCE_TECHNIQUES

        pairs = True if c.technique in PREFERENCE_TECHNIQUES else None
    source = source_for(dataset, c.text_column or None, bool(pairs), **options)
    if pairs is None and source.kind != "text":
        try:
            source.layout()
        except UserError as e:
            if "preference data" not in str(e):
                raise
            return replace(source, pairs=True)
    return source


def describe(source: Any) -> Corpus:
    """What was found: files, bytes, the layout detected (raises UserError for data the layout refuses)."""
    from pathlib import Path

    from engine.data.sources import source_bytes

    users: tuple[tuple[str, str, int], ...] = ()
    if source.kind == "slack":
        from engine.data.slack import slack_users

        users = tuple((u.id, u.name, u.messages) for u in slack_users(Path(source.path).expanduser()))
        return Corpus(len(source.files()), source_bytes(source), "slack", "slack", "a Slack export", {}, users)
    layout = source.layout()
    return Corpus(len(source.files()), source_bytes(source), source.kind, layout.format, source.describe(),
                  dict(layout.columns))


def mapping_text(columns: dict[str, str]) -> str:
    """`prompt=question, response=answer`: the column mapping as the Data step shows and edits it."""
    return ", ".join(f"{role}={column}" for role, column in columns.items())


def parse_mapping(text: str) -> dict[str, str]:
    """role=column pairs (roles: ROLES) from what the user typed; ValueError says what is wrong."""
    found: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        role, eq, column = (s.strip() for s in part.partition("="))
        if not eq or not role or not column:
            raise ValueError(f"write role=column, e.g. prompt=question (got {part!r})")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use {', '.join(ROLES)}")
        found[role] = column
    if ("prompt" in found) != ("response" in found):
        raise ValueError("give prompt= and response= together")
    return found


def apply_mapping(c: Choices, mapping: dict[str, str]) -> None:
    """Set the column settings to `mapping` (roles left out go back to detection)."""
    for role, attr in ROLES.items():
        setattr(c, attr, mapping.get(role, ""))


def chosen_mapping(c: Choices) -> dict[str, str]:
    return {role: getattr(c, attr) for role, attr in ROLES.items() if getattr(c, attr)}


def hosted(technique: str) -> bool:
    """A technique trained on a service's machines (engine/vocabulary.py): no local model or tokenizer."""
    from engine import vocabulary

    return technique in vocabulary.names(vocabulary.TECHNIQUES) and \
        vocabulary.find(vocabulary.TECHNIQUES, technique).hosted


def load_tokenizer(c: Choices) -> Any | None:
    """The chosen model's tokenizer when this machine has it (never its code), else None; scratch: None."""
    if c.technique == "scratch" or not c.model or hosted(c.technique):
        return None
    from engine.estimate.data_size import load_tokenizer as local_tokenizer

    try:
        return local_tokenizer(c.model)
    except Exception:  # noqa: BLE001 - no usable tokenizer here: the preview shows the rows, the count the ratio
        return None


def template_note(tokenizer: Any | None) -> str:
    """What data.template = "auto" means for this model."""
    if tokenizer is None:
        return "auto: the model's own chat template (when it has one)"
    if getattr(tokenizer, "chat_template", None):
        return "auto: the model's own chat template"
    return "auto: the model has none (plain ### Prompt / ### Response); pick one for a chat model"


def scratch_refusal(c: Choices, corpus: Corpus) -> str | None:
    if c.technique == "scratch" and corpus.kind != "text":
        return (f"{corpus.format} examples: the wizard trains a model from scratch on plain text (a text file or "
                "folder); go back and fine-tune a pretrained model (full or LoRA) on them, or write a scratch spec "
                "and run `llm-wizard train SPEC`, which renders them through a chat template")
    return None


def preview(source: Any, lines: int = PREVIEW_LINES) -> str:
    """The first examples without a tokenizer (prompt and response shown apart)."""
    from engine.data.sources import preview as first_examples

    out: list[str] = []
    for row in first_examples(source, lines):
        if "text" in row:
            out += [ln for ln in row["text"].splitlines() if ln.strip()]
        else:
            out.append(f"{' '.join(row['prompt'].split())[:80]}  →  {' '.join(row['response'].split())}")
        if len(out) >= lines:
            break
    return "\n".join(ln[:200] for ln in out[:lines])


def shown_preview(source: Any, tokenizer: Any, n: int = PREVIEW_EXAMPLES, limit: int = 600) -> Any:
    """The first `n` examples as trained (rich Text: masked parts dim, special tokens highlighted)."""
    from rich.text import Text

    from engine.data.prepare import first_shown
    from tui.data_view import describe_examples

    shown = first_shown(source, tokenizer, n)
    return Text("\n").join(describe_examples(shown, plain=False, decode=tokenizer.decode, limit=limit))


def count_tokens(c: Choices, progress: Callable[[int, int], None] | None = None,
                 tokenizer: Any | None = None) -> tuple[int, str]:
    """(tokens, how they were counted) for the chosen data and tokenizer. The byte tokenizer's count is
    exact without a tokenizer (UTF-8 bytes plus an end-of-text per document); a model's tokenizer counts
    through engine.estimate.data_size (examples rendered, masked and packed at the chosen seq_len as the
    run will; plain text exact up to a few hundred MB, sampled beyond)."""
    from engine.errors import UserError

    source = make_source(c)
    if hosted(c.technique):  # as the service bills them: its own tokenizer when tiktoken has it, else estimated
        from engine.techniques.openai_files import count_source

        return count_source(source, c.model, c.train_on)
    if c.technique == "scratch" and source.kind != "text":
        raise UserError(scratch_refusal(c, Corpus(0, 0, source.kind, source.layout().format)) or "", field="data.path")
    if c.technique == "scratch" and c.tokenizer == "byte":
        from engine.data.sources import iter_items, source_bytes

        total, tokens = source_bytes(source), 0
        for i, item in enumerate(iter_items(source)):
            tokens += len(item.value.text.encode("utf-8")) + int(item.value.ends)
            if progress and i % 256 == 0:
                progress(item.done, total)
        return tokens, "exact: byte tokenizer"
    from engine.estimate.data_size import count_tokens as datacheck_count

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(c)
    if c.dataset == "stdlib":  # the BPE is trained on it at the start of the run: count the bytes, it gives fewer
        tokens, _ = count_tokens(Choices(technique="scratch", tokenizer="byte", dataset="stdlib"), progress)
        return tokens, "bytes: an upper bound until the BPE tokenizer is trained"
    from engine.vocabulary import PREFERENCE_TECHNIQUES

    count = datacheck_count(c.dataset, tokenizer=tokenizer, progress=progress, source=source, seq_len=c.seq_len,
                            pairs=c.technique in PREFERENCE_TECHNIQUES)
    return count.tokens, count.method
