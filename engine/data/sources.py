"""Every data source the wizard accepts, as training items: conversations or documents, each with its place.

Sources (`DataSource.kind`, from the path):
- text: a text file or a folder of them (engine/data/corpus.py reads them; "stdlib" is Python's own source);
- table: JSONL (also gzip/zstd), JSON, CSV/TSV, Parquet, Arrow files, a folder of them, a datasets
  save_to_disk folder or a Hub-style dataset folder (engine/data/containers.py finds and reads them);
  each row read in the layout engine/data/formats.py detects (messages, sharegpt, alpaca, ...);
- hub: a Hugging Face dataset id (data.format = "hub", data.subset, data.split): the files the subset and split
  need, downloaded into the Hub cache (engine/hub/datasets.py; inside a run, pinned and with progress by
  engine/run/hub_fetch.py, which hands the folder over through `use_snapshot`) and read as a table; offline
  and not in the Hub cache, the datasets library's own cache (engine/data/hub_datasets.py);
- slack: a Slack export folder; one user's messages are the replies, the messages before each in its
  conversation the user turn (engine/data/slack.py).

A bad row raises UserError naming `file:line` and what to fix (a few of them, found in bounded time), or
is counted and skipped with data.on_bad_row = "skip".

    source = DataSource.from_spec(spec.data)
    source.layout().format                      # "messages", "alpaca", "text", ...
    for item in iter_items(source):             # Item(value=Conversation | Document, where, done)
        ...
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data import formats
from engine.data import slack as data_slack
from engine.data.preference_rows import read_pair
from engine.data.formats import BadRow, Conversation, Document, Layout, Pair
from engine.errors import UserError
from engine.spec import STDLIB

if TYPE_CHECKING:
    from engine.data.containers import DataFiles
    from engine.data.rows import Row
    from engine.spec import DataSpec

Example = Document  # the former name: a text with a masked prompt
PIECE_BYTES = 1 << 16  # text files are handed out in pieces of about this size (token_cache.PIECE_BYTES)
BAD_ROWS_SHOWN = 5  # a bad row is reported with this many others like it
BAD_ROWS_LOOKAHEAD = 10_000  # rows read past the first bad one to find more (bounded time)
DETECT_ROWS = 20  # the layout is decided on this many first rows


# (repo id, subset, split) -> the Hub snapshot folder a run downloaded it into (pinned to the run's commit).
_snapshots: dict[tuple[str, str, str], Path] = {}


def use_snapshot(repo_id: str, subset: str, split: str, folder: Path) -> None:
    """Read the Hub dataset `repo_id` from `folder` in this process (a run's pinned download)."""
    _snapshots[(repo_id, subset, split)] = Path(folder)


@dataclass(frozen=True)
class Item:
    value: Conversation | Document | Pair
    where: str  # "file:line" (or "file row N"), for messages
    done: int  # source bytes read so far, for progress


@dataclass
class Skipped:
    """Rows skipped under data.on_bad_row = "skip": how many, and the first few with the reason."""
    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.first) < BAD_ROWS_SHOWN:
            self.first.append(f"{where}: {why}")


@dataclass(frozen=True)
class DataSource:
    """Where the items come from and how rows are read; the fields mirror spec.DataSpec."""

    path: str
    format: str = "auto"
    text_column: str = ""
    prompt_column: str = ""
    response_column: str = ""
    label_column: str = ""
    messages_column: str = ""
    system_column: str = ""
    template: str = "auto"
    train_on: str = "assistant"
    packing: bool = True
    on_bad_row: str = "error"
    slack_user: str = ""
    context: int = 4
    split: str = "train"
    subset: str = ""
    pairs: bool = False  # rows are preference pairs (the dpo and orpo techniques set it; formats.detect)

    @classmethod
    def from_spec(cls, data: DataSpec) -> DataSource:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(data).items() if k in names})

    @functools.cached_property
    def files_found(self) -> DataFiles | None:
        """The located files (None for the standard library, and for a Hub dataset read from the datasets cache)."""
        if self.path == STDLIB:
            return None
        from engine.data.containers import locate

        if self.format == "hub":
            folder = self._hub_snapshot()
            return locate(folder, self.split, self.subset) if folder is not None else None

        if self.format == "text":
            p = Path(self.path).expanduser()
            if not p.exists():
                raise UserError(f"no such file or folder: {p}", field="data.path")
        found = locate(self.path, self.split, self.subset)
        if self.format == "slack" and found.kind != "slack":
            raise UserError(f"{self.path} is not a Slack export (users.json and channel folders of day files)",
                            field="data.path")
        return found

    def _hub_snapshot(self) -> Path | None:
        """The Hub snapshot folder of a dataset id: a run's pinned download, else fetched now (cached after the
        first time); None when it cannot be fetched but the datasets library's cache holds it."""
        key = (self.path, self.subset, self.split)
        if key in _snapshots:
            return _snapshots[key]
        from engine.hub.datasets import fetch_dataset

        try:
            folder = fetch_dataset(self.path, subset=self.subset or None, split=self.split or None)
        except UserError as missing:
            from engine.data import hub_datasets

            try:
                hub_datasets.load(self)
            except UserError as cached:  # offline: what the datasets cache says; online: what the Hub said
                offline = getattr(missing, "reason", "") in ("offline", "unreachable")
                raise (cached if offline else missing) from None
            return None
        _snapshots[key] = folder
        return folder

    @property
    def kind(self) -> str:
        """text, table, hub (the datasets cache) or slack."""
        if self.path == STDLIB or self.format == "text":
            return "text"
        if self.format == "hub" and self.files_found is None:
            return "hub"
        found = self.files_found
        assert found is not None
        return found.kind if found.kind in ("text", "slack") else "table"

    def layout(self) -> Layout:
        """The layout of the rows (a text source: documents; a Slack export: its own)."""
        return self._layout

    @functools.cached_property
    def _layout(self) -> Layout:
        kind = self.kind
        if kind == "text":
            if self.prompt_column or self.label_column:
                raise UserError("prompt/response and label columns need a table (JSONL, JSON, CSV, Parquet) or a "
                                "Hub dataset, not a text file", field="data.format")
            return Layout("text")
        if kind == "slack":
            return Layout("slack", {"user": self.slack_user})
        first = list(itertools.islice(_rows(self), DETECT_ROWS))
        where = first[0].where if first else self.path
        return formats.detect([r.values for r in first], self, where)

    @property
    def is_chat(self) -> bool:
        """Items are conversations rendered through a chat template (else documents)."""
        return self.layout().format in formats.CHAT_FORMATS

    @property
    def masks(self) -> bool:
        """Whether some tokens carry no loss, so examples are kept whole and apart (engine/data/pack.py)."""
        return self.layout().format not in ("text",) and not (self.train_on == "all" and not self.is_chat)

    def files(self) -> list[Path]:
        """The files read, in order (empty for a Hub dataset)."""
        if self.path == STDLIB:
            from engine.data.corpus import stdlib_corpus

            return stdlib_corpus()
        if self.kind == "hub":
            return []
        if self.kind == "slack":
            p = Path(self.path).expanduser()
            return [p / "users.json", *data_slack.day_files(p)]
        found = self.files_found
        assert found is not None
        return list(found.files)

    def describe(self) -> str:
        found = self.files_found
        where = f"{found.kind} {found.layout}" if found is not None else ("Hub cache" if self.kind == "hub" else "")
        return f"{self.layout().describe()} from {where}".strip()


def source_bytes(source: DataSource) -> int:
    """The size of what is read (for progress); a Hub dataset's cached Arrow files."""
    if source.kind == "hub":
        from engine.data import hub_datasets

        return hub_datasets.size(source)
    return sum(p.stat().st_size for p in source.files())


def _rows(source: DataSource) -> Iterator[Row]:
    if source.kind == "hub":
        from engine.data import hub_datasets

        yield from hub_datasets.rows(source)
        return
    from engine.data.containers import iter_rows

    found = source.files_found
    assert found is not None
    yield from iter_rows(found)


def iter_items(source: DataSource, skipped: Skipped | None = None) -> Iterator[Item]:
    """Every item, in a fixed order, streamed. Bad rows raise UserError, or are counted in `skipped`."""
    kind = source.kind
    if kind == "text":
        yield from _text_items(source.files())
        return
    if kind == "slack":
        yield from _slack_items(source)
        return
    layout = source.layout()
    skipped = skipped if skipped is not None else Skipped()
    rows = _rows(source)
    count = 0
    for row in rows:
        try:
            value = _read(layout, row.values)
        except BadRow as bad:
            if source.on_bad_row == "skip":
                skipped.add(row.where, str(bad))
                continue
            _raise_bad_rows(layout, row, str(bad), rows)
        if value is not None:
            count += 1
            yield Item(value, row.where, row.done)
    if not count:
        detail = f" ({skipped.count} bad rows skipped: {skipped.first[0]})" if skipped.count else ""
        raise UserError(f"{source.path}: no usable rows{detail}", field="data.path")


def _read(layout: Layout, values: dict[str, Any]) -> Conversation | Document | Pair | None:
    return read_pair(layout, values) if layout.format == "preference" else formats.read_row(layout, values)


def iter_examples(source: DataSource) -> Iterator[Document | Conversation]:
    """Every item's value (the former reader's name)."""
    for item in iter_items(source):
        yield item.value  # type: ignore[misc]


def preview(source: DataSource, n: int = 5) -> list[dict[str, str]]:
    """The first `n` items for a quick look: {"text"} for a document, {"prompt", "response"} otherwise (a
    conversation's turns before its last reply joined as the prompt). `llm-wizard data` shows them as trained."""
    shown: list[dict[str, str]] = []
    for item in itertools.islice(iter_items(source), n):
        value = item.value
        if isinstance(value, Pair):  # a preference pair: its prompt, the chosen and the rejected answer
            shared = value.chosen.trained.index(True)
            shown.append({"prompt": "\n".join(m["content"] for m in value.chosen.messages[:shared]),
                          "response": "\n".join(m["content"] for m in value.chosen.messages[shared:]),
                          "rejected": "\n".join(m["content"] for m in value.rejected.messages[shared:])})
            continue
        if isinstance(value, Document):
            shown.append({"prompt": value.prompt, "response": value.completion} if value.prompt else {"text": value.text})
            continue
        last = max(k for k, m in enumerate(value.messages) if m["role"] == "assistant")
        shown.append({"prompt": "\n".join(m["content"] for m in value.messages[:last]),
                      "response": value.messages[last]["content"]})
    return shown


def _text_items(files: list[Path]) -> Iterator[Item]:
    from engine.data.corpus import iter_pieces

    done = 0
    for path in files:
        pieces = iter_pieces(path, PIECE_BYTES)
        previous = next(pieces)  # an empty file raised already
        for piece in pieces:
            done += previous[1]
            yield Item(Document(previous[0], ends=False), str(path), done)
            previous = piece
        done += previous[1]
        yield Item(Document(previous[0]), str(path), done)


def _slack_items(source: DataSource) -> Iterator[Item]:
    root = Path(source.path).expanduser()
    for turn in data_slack.turns(root, source.slack_user, source.context):
        prompt = "\n".join(f"{name}: {text}" for name, text in turn.context)
        messages = ({"role": "user", "content": prompt}, {"role": "assistant", "content": turn.text})
        yield Item(Conversation(messages, (False, True)), turn.where, turn.done)


def _raise_bad_rows(layout: Layout, first: Row, why: str, rows: Iterator[Row]) -> None:
    bad = [f"{first.where}: {why}"]
    for row in itertools.islice(rows, BAD_ROWS_LOOKAHEAD):
        if len(bad) >= BAD_ROWS_SHOWN:
            break
        try:
            _read(layout, row.values)
        except BadRow as more:
            bad.append(f"{row.where}: {more}")
    mixed = "; the rows do not all hold the same layout" if "missing" in why or "has no" in why else ""
    raise UserError(f"bad rows in {layout.describe()} data{mixed}:\n  " + "\n  ".join(bad) +
                    "\nfix them, or set data.on_bad_row = \"skip\" to leave such rows out", field="data.path")
