"""Rows of JSONL, CSV and Parquet files, read strictly and in bounded memory, each with its place.

The row readers behind engine/data/sources.py. Every fault names the file and the line (and the column for
JSON): a broken JSONL line is `file:line:col`, a CSV without the named column lists the columns it
has, an empty Parquet file says so. Lines are decoded strictly as UTF-8 with the messages of
engine/data/corpus.py (RELIABILITY.md D1-D4); a BOM is dropped and CRLF accepted (D11).
"""

from __future__ import annotations

import csv
import json
import os
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


def jsonl_rows(path: Path, resolve: Resolve) -> Iterator[Row]:
    """One JSON object a line; blank lines are skipped. `resolve` sees the first object's keys."""
    columns: list[str] | None = None
    for number, line, done in iter_lines(path, "JSONL"):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "; a JSON array is not JSONL: convert it with jq -c '.[]'" if number == 1 and \
                line.lstrip().startswith("[") else ""
            raise UserError(f"{path}:{number}:{exc.colno}: not valid JSON ({exc.msg}){hint}", field="dataset") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line, got {_type(value)}", field="dataset")
        if columns is None:
            columns = resolve(list(value), f"{path}:{number}")
        yield Row({c: value.get(c, _MISSING) for c in columns}, f"{path}:{number}", done)
    if columns is None:
        raise UserError(f"{path} has no rows (only blank lines)", field="dataset")


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


def parquet_rows(path: Path, resolve: Resolve, batch_rows: int = 1024) -> Iterator[Row]:
    """Rows of the named columns only, a batch at a time (a row group is never read whole)."""
    size = _size(path)
    if size == 0:
        raise _empty(path)
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"cannot read {path} as Parquet: {exc}", field="dataset") from None
    total = pf.metadata.num_rows
    if total == 0:
        raise UserError(f"{path}: the Parquet file has no rows", field="dataset")
    columns = resolve(list(pf.schema_arrow.names), str(path))
    number = 0
    for batch in pf.iter_batches(columns=columns, batch_size=batch_rows):
        for values in batch.to_pylist():
            number += 1
            yield Row(values, f"{path} row {number}", size * number // total)


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


def describe_value(value: Any) -> str:
    """How a bad field reads in a message: missing, null, or its type and a short excerpt."""
    if is_missing(value):
        return "missing"
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{_type(value)} {text[:30] + '...' if len(text) > 30 else text}"


def source_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The file itself, or a folder's files with one of `suffixes` (not hidden), in sorted order."""
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise UserError(f"no {'/'.join(suffixes)} files in {path}", field="dataset")
    return found


def total_bytes(files: list[Path]) -> int:
    return sum(os.path.getsize(f) for f in files)
