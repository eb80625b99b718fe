"""Every row of one data file, whole (all its columns), with its place: the readers behind containers.py.

JSON Lines (plain, gzip or zstd), JSON (an array of objects, or an object holding one list of them),
CSV/TSV, Parquet and Arrow (IPC stream or file format). Text is decoded strictly as UTF-8 with the
messages of engine/data/corpus.py (RELIABILITY.md D1-D4), a BOM dropped and CRLF accepted (D11).
Every fault is a UserError naming the file and the line (`file:line:col` for broken JSON). Line-based
and columnar formats are streamed a block or a batch at a time; a `.json` document is read whole
(see json_rows).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from engine.data.corpus import _BOM, _check_head, _not_utf8, read_text
from engine.data.rows import Row, _empty, _size, _type
from engine.errors import UserError

BLOCK_BYTES = 1 << 20
# Name endings of the files with rows, longest first; a file of any other name is text.
KIND_SUFFIXES = (
    (".jsonl.gz", "jsonl"), (".ndjson.gz", "jsonl"), (".jsonl.zst", "jsonl"), (".ndjson.zst", "jsonl"),
    (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"), (".tsv", "tsv"),
    (".parquet", "parquet"), (".arrow", "arrow"),
)
_WS = re.compile(r"[ \t\n\r]*")


def kind_of(path: Path) -> str:
    """The kind of rows a file holds by its name: jsonl, json, csv, tsv, parquet, arrow; "" for others."""
    name = path.name.lower()
    return next((kind for suffix, kind in KIND_SUFFIXES if name.endswith(suffix)), "")


def open_binary(path: Path) -> IO[bytes]:
    """The file opened for reading (one place, so that tests can count what is read)."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", field="dataset") from None


def compression(path: Path) -> str:
    name = path.name.lower()
    return "gzip" if name.endswith(".gz") else "zstd" if name.endswith((".zst", ".zstd")) else ""


def iter_lines(path: Path, kind: str = "JSONL") -> Iterator[tuple[int, str, int]]:
    """(line number, the line without its newline, file bytes read) of a plain, gzip or zstd file.

    Read a block at a time; for a compressed file the bytes are the compressed bytes read so far.
    """
    if _size(path) == 0:
        raise _empty(path)
    packed = compression(path)
    with open_binary(path) as raw:
        stream: Any = raw
        if packed == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif packed == "zstd":
            import pyarrow as pa

            stream = pa.CompressedInputStream(raw, "zstd")
        number, offset, parts, first = 0, 0, [], True
        while True:
            try:
                block = stream.read(BLOCK_BYTES)
            except (OSError, EOFError, ValueError, zlib.error) as exc:  # pyarrow's errors are OSError/ValueError
                raise UserError(f"cannot decompress {path} ({packed}): {exc}", field="dataset") from None
            if first and block:
                _check_head(path, block[:2])
                if block.startswith(_BOM):
                    block, offset = block[len(_BOM):], len(_BOM)
                first = False
            if block:
                lines = block.split(b"\n")
                if len(lines) == 1:  # a long line goes on in the next block: joined once, when it ends
                    parts.append(block)
                    continue
                lines[0] = b"".join([*parts, lines[0]])
                parts = [lines.pop()]
            else:
                lines, parts = [b"".join(parts)] if any(parts) else [], []
            for line in lines:
                number += 1
                nul = line.find(b"\0")
                if nul >= 0:
                    raise UserError(f"not a text/{kind} file: NUL byte at offset {offset + nul} in {path}",
                                    field="dataset")
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(path, line, exc.start, offset, number) from None
                offset += len(line) + 1
                yield number, text.rstrip("\r"), raw.tell() if packed else min(offset, raw.tell())
            if not block:
                return


def jsonl_rows(path: Path, lines: Iterable[tuple[int, str, int]] | None = None) -> Iterator[Row]:
    """One JSON object a line, all its keys; blank lines are skipped."""
    count = 0
    for number, line, done in iter_lines(path) if lines is None else lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "; a JSON array is not JSON Lines: name the file .json" if count == 0 and \
                line.lstrip().startswith("[") else ""
            raise UserError(f"{path}:{number}:{exc.colno}: not valid JSON ({exc.msg}){hint}", field="dataset") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line, got {_type(value)}", field="dataset")
        count += 1
        yield Row(value, f"{path}:{number}", done)
    if not count:
        raise UserError(f"{path} has no rows (only blank lines)", field="dataset")


def json_rows(path: Path, allow_empty: bool = False) -> Iterator[Row]:
    """The objects of a JSON array, or of the one list an object holds; each named by its first line.

    The document is read whole (text and parsed values in memory: fine up to a few hundred MB; use
    JSON Lines beyond). A `.json` file holding one object a line is JSON Lines and streamed as such.
    """
    lines = iter_lines(path, "JSON")
    head: list[tuple[int, str, int]] = []
    for item in lines:
        head.append(item)
        if item[1].strip():
            break
    if _object_line(head[-1][1] if head else ""):
        for item in lines:  # a second non-blank line after a complete object: JSON Lines
            head.append(item)
            if item[1].strip():
                yield from jsonl_rows(path, [*head, *lines])
                return
    lines.close()
    text = read_text(path)
    size = _size(path)
    start = _skip(text, 0)
    if start == len(text):
        raise UserError(f"{path} has no rows (only white space)", field="dataset")
    decoder = json.JSONDecoder()
    top = text[start] == "["
    if text[start] == "{":
        start = _one_list(path, text, start, decoder)
    elif text[start] != "[":
        raise UserError(f"{path}:{_place(text, start)}: expected a JSON array of objects (or an object "
                        "holding one), or one object a line", field="dataset")
    count, line, counted = 0, 1, 0  # line numbers counted on from the previous element's
    for count, (value, at, end) in enumerate(_elements(path, text, start, decoder, top), 1):
        line, counted = line + text.count("\n", counted, at), at
        if not isinstance(value, dict):
            raise UserError(f"{path}:{line}: element {count} of the list is {_type(value)}, expected an object",
                            field="dataset")
        yield Row(value, f"{path}:{line}", size * end // len(text))
    if not count and not allow_empty:
        raise UserError(f"{path} has no rows (an empty list)", field="dataset")


def _object_line(line: str) -> bool:
    if not line.lstrip().lstrip("\ufeff").startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]  # the pattern matches the empty string


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _place(text: str, pos: int) -> str:
    return f"{_line(text, pos)}:{pos - text.rfind(chr(10), 0, pos)}"


def _decode(path: Path, decoder: json.JSONDecoder, text: str, pos: int) -> tuple[Any, int]:
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})", field="dataset") from None


def _expect(path: Path, text: str, pos: int, chars: str) -> str:
    if pos < len(text) and text[pos] in chars:
        return text[pos]
    wanted = " or ".join(repr(c) for c in chars)
    raise UserError(f"{path}:{_place(text, pos)}: not valid JSON (expected {wanted})", field="dataset")


def _elements(path: Path, text: str, pos: int, decoder: json.JSONDecoder, top: bool) -> Iterator[tuple[Any, int, int]]:
    """(value, start, end) of each element of the array opening at `pos`; only white space may follow a
    `top` array (an array inside an object: _one_list has checked the rest)."""
    pos = _skip(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        pos = _skip(text, pos + 1)
    else:
        while True:
            value, end = _decode(path, decoder, text, pos)
            yield value, pos, end
            pos = _skip(text, end)
            closing = _expect(path, text, pos, ",]") == "]"
            pos = _skip(text, pos + 1)
            if closing:
                break
    if top and pos != len(text):
        raise UserError(f"{path}:{_place(text, pos)}: not valid JSON (extra data after the array)", field="dataset")


def _one_list(path: Path, text: str, start: int, decoder: json.JSONDecoder) -> int:
    """Where the one list of objects held by the object at `start` opens."""
    lists: dict[str, tuple[int, bool]] = {}  # key -> (offset, holds an object)
    pos = _skip(text, start + 1)
    if pos < len(text) and text[pos] == "}":
        pos += 1
    else:
        while True:
            key, pos = _decode(path, decoder, text, pos)
            if not isinstance(key, str):
                raise UserError(f"{path}:{_place(text, pos)}: not valid JSON (expected a key)", field="dataset")
            pos = _skip(text, pos)
            _expect(path, text, pos, ":")
            at = _skip(text, pos + 1)
            value, pos = _decode(path, decoder, text, at)
            if isinstance(value, list):
                lists[key] = (at, any(isinstance(v, dict) for v in value))
            pos = _skip(text, pos)
            closing = _expect(path, text, pos, ",}") == "}"
            pos = _skip(text, pos + 1)
            if closing:
                break
    if pos != len(text):
        raise UserError(f"{path}:{_place(text, pos)}: not valid JSON (extra data after the object)", field="dataset")
    found = [k for k, (_, objects) in lists.items() if objects] or list(lists)
    if len(found) != 1:
        what = f"several lists ({', '.join(repr(k) for k in found)})" if found else "no list"
        raise UserError(f"{path}: the object holds {what}; expected one list of rows: keep only the rows' list, "
                        "or extract it with jq '.KEY'", field="dataset")
    return lists[found[0]][0]


def table_rows(path: Path, kind: str, batch_rows: int = 1024) -> Iterator[Row]:
    """Every row of a Parquet or Arrow file, all columns, a batch at a time; ClassLabel ints as names."""
    import pyarrow as pa

    size = _size(path)
    if size == 0:
        raise _empty(path)
    what = "Parquet" if kind == "parquet" else "Arrow"
    number = 0
    try:
        batches, labels, position = _open_table(path, kind, batch_rows)
        before = 0
        for batch in batches:
            rows = batch.to_pylist()
            after = position() if rows else before
            for k, values in enumerate(rows, 1):
                for column, names in labels.items():
                    value = values.get(column)
                    if isinstance(value, int) and 0 <= value < len(names):
                        values[column] = names[value]
                number += 1
                yield Row(values, f"{path} row {number}", before + (after - before) * k // len(rows))
            before = after
    except (OSError, pa.ArrowException, ValueError) as exc:  # a file that is not Parquet/Arrow, or cut short
        raise UserError(f"cannot read {path} as {what}{f' (after row {number})' if number else ''}: {exc}",
                        field="dataset") from None
    if not number:
        raise UserError(f"{path}: the {what} file has no rows", field="dataset")


def _open_table(path: Path, kind: str, batch_rows: int) -> tuple[Iterator[Any], dict[str, list[str]], Any]:
    """(record batches, ClassLabel names by column, bytes read so far as a function)."""
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        total, size, seen = pf.metadata.num_rows, _size(path), [0]

        def batches() -> Iterator[Any]:
            for batch in pf.iter_batches(batch_size=batch_rows):
                seen[0] += batch.num_rows
                yield batch

        return batches(), class_labels(pf.schema_arrow.metadata), lambda: size * seen[0] // max(total, 1)
    import pyarrow.ipc as ipc

    source = pa.memory_map(str(path))
    if source.read(6) == b"ARROW1":  # the IPC file format; datasets writes the stream format
        source.seek(0)
        reader = ipc.open_file(source)
        n, size, read = reader.num_record_batches, source.size(), [0]

        def numbered() -> Iterator[Any]:
            for i in range(n):
                read[0] = i + 1
                yield reader.get_batch(i)

        return numbered(), class_labels(reader.schema.metadata), lambda: size * read[0] // n
    source.seek(0)
    stream = ipc.open_stream(source)
    return iter(stream), class_labels(stream.schema.metadata), source.tell


def class_labels(metadata: dict[bytes, bytes] | None) -> dict[str, list[str]]:
    """The label names of datasets' ClassLabel columns, from the schema metadata datasets writes."""
    try:
        info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
        features = info.get("info", info).get("features") or {}
        return {name: list(f["names"]) for name, f in features.items()
                if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}
    except (ValueError, AttributeError, TypeError):
        return {}  # metadata written by another tool: the ints stay ints
