"""Every data source the wizard accepts, as training examples: preview, examples, token count.

Sources (`DataSource.format`; "auto" picks one from the path):
- text: a text file or a folder of them (engine/data/corpus.py reads them; "stdlib" is Python's own source);
- jsonl, csv, parquet: a file (or a folder of such files) with columns. Either a text column
  (`text_column`; empty = the first of text/content/body/message/document), or `prompt_column` and
  `response_column` joined with `template`, or `text_column` + `label_column` in the book's
  classification format "<text_column> : <text> Label : <label>" (listing 5.3);
- hub: a Hugging Face dataset id read from the local datasets cache only (offline);
- slack: a Slack export folder; one user's messages are the responses, the messages before each
  in its conversation the prompt (engine/data/slack.py).

An `Example` is `text`, the whole training text, and `prompt`, the leading part of `text` that is
masked from the loss ("" = train on all of it). A text file is cut into pieces at newlines so memory
stays bounded; `ends` is False on every piece but a document's last (no end-of-text token after it).
Malformed input raises UserError naming the file and line (and column for JSON).

    from engine.data.sources import DataSource, preview, iter_examples, count_tokens
    source = DataSource.from_spec(spec.data)           # or DataSource("chat.jsonl", prompt_column="q",
                                                       #               response_column="a")
    preview(source, n=3)   # [{"prompt": "### Prompt:\\nhi\\n### Response:\\n", "response": "hello"}, ...]
    for ex in iter_examples(source):
        ex.prompt, ex.completion                       # masked part, trained part (ex.text = both)
    count_tokens(source, tokenizer)                    # ids the trainer will see, an eos per document

Token blocks for training, with the prompt masked: engine/data/pack.py (`example_blocks`).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data import rows as data_rows

from engine.data import slack as data_slack
from engine.data.rows import Row, describe_value, is_missing
from engine.errors import UserError
from engine.spec import DATA_FORMATS, DEFAULT_TEMPLATE, STDLIB

if TYPE_CHECKING:
    from engine.spec import DataSpec

TEXT_COLUMNS = ("text", "content", "body", "message", "document")
SUFFIXES = {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "parquet": (".parquet",)}
PIECE_BYTES = 1 << 16  # text files are handed out in pieces of about this size (token_cache.PIECE_BYTES)
BAD_ROWS_SHOWN = 5  # a bad field is reported with this many example lines
BAD_ROWS_LOOKAHEAD = 10_000  # rows read past the first bad one to find more (bounded time)

Progress = Callable[[int, int], None]  # (source bytes done, source bytes total)


@dataclass(frozen=True)
class Example:
    text: str  # the whole training text
    prompt: str = ""  # the leading part of `text` with no loss on it
    ends: bool = True  # False: the document goes on in the next example (no eos in between)

    def __post_init__(self) -> None:
        if not self.text.startswith(self.prompt):
            raise ValueError("Example.prompt must be the start of Example.text")

    @property
    def completion(self) -> str:
        return self.text[len(self.prompt):]


@dataclass(frozen=True)
class DataSource:
    """Where the examples come from and how rows become text; the fields mirror spec.DataSpec."""

    path: str
    format: str = "auto"
    text_column: str = "text"
    prompt_column: str = ""
    response_column: str = ""
    label_column: str = ""
    template: str = DEFAULT_TEMPLATE
    mask_prompt: bool = True
    slack_user: str = ""
    context: int = 4
    split: str = "train"
    subset: str = ""

    @classmethod
    def from_spec(cls, data: DataSpec) -> DataSource:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(data).items() if k in names})

    @functools.cached_property
    def kind(self) -> str:
        """The format, with "auto" resolved from the path (a folder: Slack, all of one table format, or text)."""
        if self.format not in DATA_FORMATS:
            raise UserError(f"data.format: unknown value {self.format!r}: choose one of {', '.join(DATA_FORMATS)}",
                            field="data.format")
        if self.format != "auto":
            return self.format
        if self.path == STDLIB:
            return "text"
        p = Path(self.path).expanduser()
        if not p.exists():
            hint = " (for a Hub dataset set data.format = \"hub\")" if self.path.count("/") == 1 else ""
            raise UserError(f"no such file or folder: {p}{hint}", field="data.path")
        if p.is_dir():
            if data_slack.is_export(p):
                return "slack"
            suffixes = {f.suffix.lower() for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")}
            tables = [kind for kind, known in SUFFIXES.items() if suffixes and suffixes <= set(known)]
            return tables[0] if tables else "text"
        for kind, suffixes in SUFFIXES.items():
            if p.suffix.lower() in suffixes:
                return kind
        return "text"

    @property
    def mode(self) -> str:
        """How an example is made: "text", "prompt" (prompt/response, Slack) or "label"."""
        if self.kind == "slack" or self.prompt_column:
            return "prompt"
        return "label" if self.label_column else "text"

    @property
    def masks(self) -> bool:
        """Whether some tokens carry no loss (the trainer then needs the mask)."""
        return self.mask_prompt and self.mode != "text"

    def files(self) -> list[Path]:
        """The files read, in order (empty for a Hub dataset)."""
        kind = self.kind
        p = Path(self.path).expanduser()
        if kind == "hub":
            return []
        if kind == "text":
            from engine.data.corpus import stdlib_corpus, text_files

            return stdlib_corpus() if self.path == STDLIB else text_files(p)
        if kind == "slack":
            return [p / "users.json", *data_slack.day_files(p)]
        return data_rows.source_files(p, SUFFIXES[kind])


def iter_examples(source: DataSource) -> Iterator[Example]:
    """Every example, in a fixed order, streamed."""
    for example, _ in examples_with_bytes(source):
        yield example


def preview(source: DataSource, n: int = 5) -> list[dict[str, str]]:
    """The first `n` examples as {"text": ...} or {"prompt": ..., "response": ...} for display."""
    shown: list[dict[str, str]] = []
    for ex in itertools.islice(iter_examples(source), n):
        if source.mode == "text":
            shown.append({"text": ex.text})
        else:
            prompt = ex.prompt or _split_point(source, ex)
            shown.append({"prompt": prompt, "response": ex.text[len(prompt):]})
    return shown


def count_tokens(source: DataSource, tokenizer: Any, progress: Progress | None = None) -> int:
    """Tokens the trainer will see: every example's ids plus an eos after each document.

    `tokenizer` is a transformers tokenizer or a tokenizers.Tokenizer. Prompt and completion are
    encoded apart, as for training, so the count is exact. `progress(done, total)` is in source bytes.
    """
    encode = _counter(tokenizer)
    total = source_bytes(source)
    tokens = 0
    batch: list[str] = []
    done = 0
    for example, done in examples_with_bytes(source):
        batch.append(example.prompt)
        batch.append(example.completion)
        tokens += int(example.ends)
        if len(batch) >= 512:
            tokens += encode(batch)
            batch = []
            if progress is not None:
                progress(min(done, total), total)
    tokens += encode(batch)
    if progress is not None:
        progress(total, total)
    return tokens


def source_bytes(source: DataSource) -> int:
    """The size of what is read (for progress); a Hub dataset's cached Arrow files."""
    if source.kind == "hub":
        return _hub_bytes(source)
    return data_rows.total_bytes(source.files())


# --- examples from each kind of source ---------------------------------------------------------------


def examples_with_bytes(source: DataSource) -> Iterator[tuple[Example, int]]:
    """(example, source bytes read so far): iter_examples with a position for progress bars."""
    kind = source.kind
    if kind == "text":
        if source.mode != "text":
            raise UserError("prompt/response and label columns need a JSONL, CSV, Parquet or Hub source",
                            field="data.format")
        yield from _text_examples(source.files())
    elif kind == "slack":
        yield from _slack_examples(source)
    else:
        count = 0
        for example, done in _from_rows(source, _rows(source)):
            count += 1
            yield example, done
        if not count:
            raise UserError(f"{source.path}: every row's text is empty", field="dataset")


def _text_examples(files: list[Path]) -> Iterator[tuple[Example, int]]:
    from engine.data.corpus import iter_pieces

    done = 0
    for path in files:
        pieces = iter_pieces(path, PIECE_BYTES)
        previous = next(pieces)  # an empty file raised already
        for piece in pieces:
            done += previous[1]
            yield Example(previous[0], ends=False), done
            previous = piece
        done += previous[1]
        yield Example(previous[0]), done


def _slack_examples(source: DataSource) -> Iterator[tuple[Example, int]]:
    root = Path(source.path).expanduser()
    for turn in data_slack.turns(root, source.slack_user, source.context):
        prompt = "\n".join(f"{name}: {text}" for name, text in turn.context)
        yield _templated(source, prompt, turn.text), turn.done


def _rows(source: DataSource) -> Iterator[Row]:
    """Every row of every file, with `done` counted over all files."""
    resolve = _resolver(source)
    if source.kind == "hub":
        yield from data_rows.arrow_rows(_hub_dataset(source), _hub_name(source), resolve, _hub_bytes(source))
        return
    reader = {"jsonl": data_rows.jsonl_rows, "csv": data_rows.csv_rows, "parquet": data_rows.parquet_rows}[source.kind]
    done = 0
    for path in source.files():
        for row in reader(path, resolve):
            yield Row(row.values, row.where, done + row.done)
        done += os.path.getsize(path)


def _columns(source: DataSource) -> list[str]:
    if source.prompt_column:
        return [source.prompt_column, source.response_column]
    if source.label_column:
        return [source.text_column, source.label_column]
    return [source.text_column]


def _resolver(source: DataSource) -> Callable[[list[str], str], list[str]]:
    def resolve(have: list[str], where: str) -> list[str]:
        wanted = _columns(source)
        if not source.prompt_column and not source.text_column:  # guess the text column
            guess = next((c for c in TEXT_COLUMNS if c in have), None)
            if guess is None:
                raise UserError(f"{where}: which column holds the text? set data.text_column "
                                f"(columns: {', '.join(have) or 'none'})", field="data.text_column")
            wanted[0] = guess
        for name in wanted:  # JSONL: the first row's keys (later rows' fields are checked as they come)
            if name not in have:
                raise UserError(f"{where} has no column {name!r}; it has {', '.join(have) or 'none'}",
                                field="data.text_column")
        return wanted
    return resolve


def _from_rows(source: DataSource, rows: Iterator[Row]) -> Iterator[tuple[Example, int]]:
    for row in rows:
        example = _example(source, row.values)
        if isinstance(example, str):  # a bad field: find a few more, then say where
            _raise_bad_rows(source, row, example, rows)
        if example is not None:
            yield example, row.done


def _example(source: DataSource, values: dict[str, Any]) -> Example | str | None:
    """The row's example; None for an empty text (skipped); a str naming the bad field."""
    names = list(values)
    for name in names:
        value = values[name]
        is_label = name == source.label_column and name != names[0]
        if is_missing(value) or value is None:
            return name
        if not (isinstance(value, str) or (is_label and isinstance(value, (int, bool)))):
            return name
    first = values[names[0]]
    if source.prompt_column:
        return _templated(source, first, values[names[1]])
    if source.label_column:
        prompt = f"{names[0]} : {first} Label : "
        return Example(prompt + str(values[names[1]]), prompt if source.mask_prompt else "")
    return Example(first) if first else None


def _raise_bad_rows(source: DataSource, first: Row, field: str, rows: Iterator[Row]) -> None:
    bad = [(first.where, describe_value(first.values.get(field)))]
    for row in itertools.islice(rows, BAD_ROWS_LOOKAHEAD):
        if len(bad) >= BAD_ROWS_SHOWN:
            break
        if _example(source, row.values) == field:
            bad.append((row.where, describe_value(row.values.get(field))))
    expect = "text or a number" if field == source.label_column else "text"
    places = "; ".join(f"{where} ({what})" for where, what in bad)
    raise UserError(f"field {field!r} must be {expect} in every row: {places}", field="dataset")


def _templated(source: DataSource, prompt: str, response: str) -> Example:
    head, tail = source.template.split("{response}")
    head = head.replace("{prompt}", prompt)
    return Example(head + response + tail, head if source.mask_prompt else "")


def _split_point(source: DataSource, example: Example) -> str:
    """The prompt part of an unmasked example, for the preview (the text before the response)."""
    if source.mode == "label":
        cut = example.text.rfind(" Label : ")
        return example.text[:cut + len(" Label : ")] if cut >= 0 else ""
    return ""


# --- Hub datasets, from the local cache only ---------------------------------------------------------


def _hub_name(source: DataSource) -> str:
    return f"{source.path}{'/' + source.subset if source.subset else ''} [{source.split}]"


_hub_cache: dict[tuple[str, str, str, str], Any] = {}


def _datasets_cache() -> str:
    """Where datasets keeps prepared data, read from the environment now (datasets reads it at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.expanduser(os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets"))


def _hub_dataset(source: DataSource) -> Any:
    cache = _datasets_cache()
    key = (source.path, source.subset, source.split, cache)
    if key in _hub_cache:
        return _hub_cache[key]
    import datasets

    # Offline for this call only (datasets reads these at import; a model download later may go online).
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved_config = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    # Its "using the cached version" warnings and progress bars would scribble over the wizard's screen.
    verbosity, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(source.path, source.subset or None, split=source.split, cache_dir=cache)
    except ValueError as exc:  # an unknown split, or a subset that is not cached
        raise UserError(f"Hub dataset {_hub_name(source)}: {exc}",
                        field="data.subset" if "config" in str(exc) else "data.split") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not in the cache"
        raise UserError(
            f"Hub dataset {source.path!r} is not in the local cache and this machine works offline "
            f"({type(exc).__name__}). On a connected machine run: python -c \"import datasets; "
            f"datasets.load_dataset('{source.path}'{', ' + repr(source.subset) if source.subset else ''})\" "
            "and copy its ~/.cache/huggingface (or $HF_HOME) here, or export the data to JSONL/Parquet",
            field="data.path") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved_config
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    _hub_cache[key] = ds
    return ds


def _hub_bytes(source: DataSource) -> int:
    ds = _hub_dataset(source)
    return sum(os.path.getsize(f["filename"]) for f in ds.cache_files if os.path.exists(f["filename"])) or len(ds)


def _counter(tokenizer: Any) -> Callable[[list[str]], int]:
    if hasattr(tokenizer, "encode_batch") and not hasattr(tokenizer, "backend_tokenizer"):  # tokenizers.Tokenizer
        return lambda texts: sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    from engine.data.token_cache import _encoder

    encode = _encoder(tokenizer)
    return lambda texts: sum(len(ids) for ids in encode(texts)) if texts else 0
