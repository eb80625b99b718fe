"""Where the rows are: the data files of whatever the user points at, and every row of them, whole.

`locate(path, split, subset)` finds the files and their kind without reading rows:
- a file: its kind by name (.jsonl/.ndjson, also .gz and .zst compressed; .json; .csv; .tsv; .parquet;
  .arrow), any other file is "text";
- a `datasets` save_to_disk folder: a Dataset (state.json + data-*.arrow; it is one set of rows, so
  `split` is not checked) or a DatasetDict (dataset_dict.json + a folder per split: `split` picks one);
- a Slack export (engine/data/slack.py): "slack", users.json first, then the day files;
- a Hub-style dataset folder (README.md or .gitattributes beside data files, a README `configs:`, or split
  names in file or folder names): files and splits by the Hub's conventions (engine/data/hub_layout.py);
- any other folder: all of its files of one kind, or plain text (engine/data/corpus.text_files decides);
  files of several kinds are refused, naming them.
`iter_rows` reads them (engine/data/file_rows.py): every column of every row, `where` naming the file and
line (or row), `done` the bytes of the files read so far (compressed bytes for .gz/.zst). Text comes as
{"text": piece, "ends": whether the file ends with it} in pieces of about 1 MiB; a Slack export as the
message objects of its day files (engine/data/slack.py makes conversations of them).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.data import file_rows, hub_layout
from engine.data import slack as data_slack
from engine.data.rows import Row
from engine.errors import UserError

LAYOUTS = ("file", "folder", "save_to_disk", "hub_folder")
# Files in a data folder that document it; they are never read as rows.
DOCUMENTATION = frozenset({"readme", "readme.md", "readme.txt", "license", "license.md", "license.txt",
                           "copying", "citation.cff", "notice", ".gitattributes"})
# The Hub reads these kinds with one builder each; a Hub folder's files are the most common builder's.
_BUILDER = {"jsonl": "json", "json": "json", "csv": "csv", "tsv": "csv"}


@dataclass(frozen=True)
class DataFiles:
    root: Path  # what the user named (expanded)
    kind: str  # "jsonl" | "json" | "csv" | "tsv" | "parquet" | "arrow" | "text" | "slack"
    files: tuple[Path, ...]  # in reading order
    layout: str  # "file" | "folder" | "save_to_disk" | "hub_folder"
    split: str  # the split these files hold ("" when the layout has no splits)
    splits: tuple[str, ...]  # every split found (the wizard offers them), e.g. ("train", "test")

    @property
    def total_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)


def locate(path: str | os.PathLike[str], split: str = "train", subset: str = "") -> DataFiles:
    """The files behind `path` and their kind; `split` and `subset` pick among a dataset folder's files."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"no such file or folder: {root}", field="data.path")
    if root.is_file():
        _no_splits(root, split, subset)
        return DataFiles(root, file_rows.kind_of(root) or "text", (root,), "file", "", ())
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return _saved(root, split)
    if data_slack.is_export(root):
        _no_splits(root, split, subset)
        return DataFiles(root, "slack", (root / "users.json", *data_slack.day_files(root)), "folder", "", ())
    configs = hub_layout.readme_configs(root)
    if configs:
        _, splits = hub_layout.config_splits(root, configs, subset)
        return _hub(root, splits, split)
    base = root
    if subset:
        base = root / subset
        if not base.is_dir():
            raise UserError(f"{root} declares no configs (no `configs:` in a README.md) and has no folder "
                            f"{subset!r}: leave data.subset empty", field="data.subset")
    found = hub_layout.data_files(base)
    cloned = (root / ".gitattributes").is_file() or _front_matter(root / "README.md")
    if not any(file_rows.kind_of(f) for f in found) and not (cloned and found):  # a text corpus
        from engine.data.corpus import text_files

        _no_splits(root, split, subset)
        return DataFiles(root, "text", tuple(text_files(root)), "folder", "", ())
    splits = hub_layout.by_convention(base, found)
    if splits is None and not subset and not cloned and not (root / "README.md").is_file():
        return _folder(root, split)
    return _hub(root, splits or {"train": found}, split)


def iter_rows(data: DataFiles) -> Iterator[Row]:
    """Every row of every file, in order; `done` counts the bytes of all files read so far."""
    files = data.files[1:] if data.kind == "slack" else data.files  # users.json names, it holds no rows
    before = data.files[0].stat().st_size if data.kind == "slack" else 0
    for path in files:
        kind = data.kind if data.kind in ("text", "slack") else file_rows.kind_of(path)
        if kind == "slack":
            rows = file_rows.json_rows(path, allow_empty=True)  # a quiet day may be an empty list
        elif kind in ("jsonl", "json"):
            rows = file_rows.jsonl_rows(path) if kind == "jsonl" else file_rows.json_rows(path)
        elif kind in ("csv", "tsv"):
            from engine.data.rows import csv_rows

            rows = csv_rows(path, lambda have, _: have, delimiter="\t" if kind == "tsv" else ",")
        elif kind in ("parquet", "arrow"):
            rows = file_rows.table_rows(path, kind)
        else:
            rows = _text_rows(path)
        for row in rows:
            yield Row(row.values, row.where, before + row.done)
        before += path.stat().st_size


def first_rows(data: DataFiles, n: int = 20) -> list[Row]:
    """The first `n` rows, reading no further than they need (the format detector and the wizard's preview)."""
    rows = iter_rows(data)
    try:
        return list(itertools.islice(rows, n))
    finally:
        rows.close()  # closes the file being read now, not when the generator is collected


def _text_rows(path: Path) -> Iterator[Row]:
    """A text file in pieces of about 1 MiB ending at a newline: {"text": piece, "ends": last piece of the file}
    (a document longer than a piece goes on in the next row); `where` is the line the piece starts on."""
    from engine.data.corpus import iter_pieces

    pieces = iter_pieces(path)
    previous = next(pieces)  # an empty file raised already
    line, done = 1, 0
    for piece in itertools.chain(pieces, [None]):
        done += previous[1]
        yield Row({"text": previous[0], "ends": piece is None}, f"{path}:{line}", done)
        line += previous[0].count("\n")
        if piece is not None:
            previous = piece


def _front_matter(readme: Path) -> bool:
    """A README.md that opens with YAML front matter: a Hub dataset card."""
    try:
        with readme.open("rb") as handle:
            return handle.read(3) == b"---"
    except OSError:
        return False


def _no_splits(root: Path, split: str, subset: str) -> None:
    if split not in ("", "train"):
        raise UserError(f"{root} has no splits (it is one set of rows): leave data.split empty or \"train\"",
                        field="data.split")
    if subset:
        raise UserError(f"{root} has no configs: leave data.subset empty", field="data.subset")


def _pick(root: Path, splits: list[str], split: str) -> str:
    """The split asked for, by its Hub name too ("dev" finds "validation"); "" means train."""
    wanted = split or "train"
    for name in (wanted, hub_layout.canonical(wanted)):
        if name in splits:
            return name
    raise UserError(f"{root} has no split {wanted!r}; its splits: {', '.join(splits) or 'none'}", field="data.split")


def _folder(root: Path, split: str) -> DataFiles:
    """A folder of data files of one kind (not a Hub layout: every file, no splits)."""
    _no_splits(root, split, "")
    kinds: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts):
        parts = path.relative_to(root).parts
        if any(p.startswith((".", "__")) for p in parts) or not path.is_file() or \
                path.name.lower() in DOCUMENTATION or path.name in hub_layout.IGNORED:
            continue
        kind = file_rows.kind_of(path)
        if not kind and path.stat().st_size:
            from engine.data.corpus import BINARY_SUFFIXES

            kind = "" if path.suffix.lower() in BINARY_SUFFIXES else "text"
        if kind:
            kinds.setdefault(kind, []).append(path)
    if len(kinds) > 1:
        raise UserError(f"{root} holds files of several kinds ({_count(root, kinds)}): point data.path at one "
                        "file, or at a folder holding one kind", field="data.path")
    (kind, files), = kinds.items()
    return DataFiles(root, kind, tuple(files), "folder", "", ())


def _hub(root: Path, splits: hub_layout.Splits, split: str) -> DataFiles:
    """The chosen split's files, of the kind most of the folder's files have (the Hub's own choice)."""
    names = list(splits)
    chosen = _pick(root, names, split)
    every = [f for s in names for f in splits[s]]
    builders = Counter(_BUILDER.get(k, k) for k in map(hub_layout.hub_kind, every) if k)
    top = builders.most_common(2)
    if not top:
        raise UserError(f"{root}: no data files (.jsonl, .json, .csv, .tsv, .parquet, .arrow, .txt) in split "
                        f"{chosen!r}", field="data.path")
    if len(top) == 2 and top[0][1] == top[1][1]:
        kinds: dict[str, list[Path]] = {}
        for f in every:
            kinds.setdefault(hub_layout.hub_kind(f), []).append(f)
        raise UserError(f"{root} holds as many files of one kind as of another ({_count(root, kinds)}): keep "
                        "one kind, or declare the data files in README.md's `configs:`", field="data.path")
    builder = top[0][0]
    files = [f for f in splits[chosen] if _BUILDER.get(hub_layout.hub_kind(f), hub_layout.hub_kind(f)) == builder]
    if not files:
        raise UserError(f"{root}: split {chosen!r} has no {builder} files", field="data.split")
    kind = Counter(hub_layout.hub_kind(f) for f in files).most_common(1)[0][0]
    return DataFiles(root, kind, tuple(files), "hub_folder", chosen, tuple(names))


def _saved(root: Path, split: str) -> DataFiles:
    """A folder written by datasets' save_to_disk, read as the Arrow files it lists."""
    if (root / "dataset_dict.json").is_file():
        names = _json(root / "dataset_dict.json").get("splits")
        if not isinstance(names, list) or not names:
            raise UserError(f"{root / 'dataset_dict.json'}: no list of splits", field="data.path")
        chosen = _pick(root, [str(n) for n in names], split)
        files, _ = _saved_dataset(root / chosen)
        return DataFiles(root, "arrow", files, "save_to_disk", chosen, tuple(str(n) for n in names))
    files, own = _saved_dataset(root)
    return DataFiles(root, "arrow", files, "save_to_disk", own, (own,) if own else ())


def _saved_dataset(folder: Path) -> tuple[tuple[Path, ...], str]:
    """(the Arrow files in order, the split the Dataset was saved as, "" if none)."""
    state = _json(folder / "state.json")
    listed = state.get("_data_files")
    if not isinstance(listed, list):
        raise UserError(f"{folder / 'state.json'}: no _data_files list; is this a datasets save_to_disk folder?",
                        field="data.path")
    files = tuple(folder / str(f.get("filename")) for f in listed if isinstance(f, dict))
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise UserError(f"{folder}: the Arrow files state.json lists are missing ({', '.join(missing) or 'none listed'})",
                        field="data.path")
    return files, str(state.get("_split") or "")


def _json(path: Path) -> dict:
    from engine.data.corpus import read_text

    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})", field="data.path") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object", field="data.path")
    return value


def _count(root: Path, kinds: dict[str, list[Path]]) -> str:
    def one(kind: str, files: list[Path]) -> str:
        named = ", ".join(str(f.relative_to(root)) for f in files[:2]) + (", ..." if len(files) > 2 else "")
        return f"{kind}: {len(files)} file{'s' if len(files) > 1 else ''} ({named})"
    return "; ".join(one(k, fs) for k, fs in sorted(kinds.items()))
