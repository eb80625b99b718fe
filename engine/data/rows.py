"""The row type and the strict line and CSV readers under engine/data/file_rows.py, in bounded memory.

Every fault names the file and the line: lines are decoded strictly as UTF-8 with the messages of
engine/data/corpus.py (RELIABILITY.md D1-D4); a BOM is dropped and CRLF accepted (D11). A CSV without
the named column lists the columns it has. Rows of a datasets.Dataset (the datasets library's cache) are
read the same way by `arrow_rows`.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.corpus import _BOM, _check_head, _not_utf8
from engine.errors import UserError

# Given the columns a file has, the columns to read (raises UserError naming what is missing).
Resolve = Callable[[list[str], str], list[str]]


@dataclass(frozen=True)
class Row:
    values: dict[str, Any]
    where: str  # "file:line" (JSONL, CSV) or "file row N" (Parquet), for messages
    done: int  # file bytes consumed up to and including this row, for progress


def _empty(path: Path) -> UserError:
    return UserError(f"file is empty: {path}", field="dataset")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", field="dataset") from None


def iter_lines(path: Path, kind: str = "text") -> Iterator[tuple[int, str, int]]:
    """(line number, the line without its newline, file bytes consumed) for every line, strictly decoded."""
    if _size(path) == 0:
        raise _empty(path)
    with path.open("rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, 1):
            if number == 1:
                _check_head(path, raw[:2])
                if raw.startswith(_BOM):
                    raw, offset = raw[len(_BOM):], len(_BOM)
            nul = raw.find(b"\0")
            if nul >= 0:
                raise UserError(f"not a text/{kind} file: NUL byte at offset {offset + nul} in {path}", field="dataset")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw, exc.start, offset, number) from None
            offset += len(raw)
            yield number, line.rstrip("\r\n"), offset




def csv_rows(path: Path, resolve: Resolve, delimiter: str = ",") -> Iterator[Row]:
    """A header line, then one record a row (quoted fields may span lines; the first line is named)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the default 128 KB stops long documents
    done = [0]

    def lines() -> Iterator[str]:
        for _, line, consumed in iter_lines(path, "CSV" if delimiter == "," else "TSV"):
            done[0] = consumed
            yield line + "\n"

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise UserError(f"{path}: no header line with column names", field="dataset")
        header = [h.strip() for h in header]
        columns = resolve(header, str(path))
        index = {c: header.index(c) for c in columns}
        start = reader.line_num + 1
        count = 0
        for record in reader:
            if record:  # a blank line between records
                count += 1
                values = {c: record[i] if i < len(record) else _MISSING for c, i in index.items()}
                yield Row(values, f"{path}:{start}", done[0])
            start = reader.line_num + 1
    except csv.Error as exc:
        what = "CSV" if delimiter == "," else "TSV"
        raise UserError(f"{path}:{reader.line_num}: not valid {what} ({exc})", field="dataset") from None
    if not count:
        raise UserError(f"{path} has a header but no rows", field="dataset")




def arrow_rows(table: Any, name: str, resolve: Resolve, total_bytes: int, batch_rows: int = 1024) -> Iterator[Row]:
    """Rows of a datasets.Dataset (memory-mapped Arrow) the same way, for Hub datasets."""
    columns = resolve(list(table.column_names), name)
    n = len(table)
    if n == 0:
        raise UserError(f"{name} has no rows", field="dataset")
    table = table.select_columns(columns)
    # A class label is stored as an int; its name ("complaint") is what the model should learn to say.
    names = {c: f.int2str for c, f in table.features.items() if type(f).__name__ == "ClassLabel"}
    for first in range(0, n, batch_rows):
        chunk = table[first:first + batch_rows]  # a dict of lists
        for c, int2str in names.items():
            chunk[c] = [int2str(v) if isinstance(v, int) and v >= 0 else v for v in chunk[c]]
        for k in range(len(chunk[columns[0]])):
            number = first + k + 1
            yield Row({c: chunk[c][k] for c in columns}, f"{name} row {number}", total_bytes * number // n)


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING: Any = _Missing()  # a field the row does not have (unlike null, which it has)


def is_missing(value: Any) -> bool:
    return value is _MISSING


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", bool: "a boolean", str: "a string",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
