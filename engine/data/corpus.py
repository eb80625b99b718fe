"""Plain-text corpora: find the files, read them strictly, fingerprint them.

Bad data is caught here, before anything heavy runs (RELIABILITY.md D1-D3): an empty file, a binary
file and a file that is not UTF-8 each get one line that names the file and says what to do.
Text is normalised the same way everywhere (BOM stripped, CRLF and CR turned into LF), so a corpus
written on Windows tokenizes like the same corpus written on Linux.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from engine.errors import UserError

# Extensions that are certainly not text. Anything else found in a folder is treated as text and
# validated when read, so that READMEs, LICENSE files and .jsonl dumps are not silently dropped.
BINARY_SUFFIXES = frozenset(
    """
    .7z .a .avi .bin .bmp .bz2 .class .dat .db .dll .doc .docx .dylib .eot .exe .flac .gguf .gif
    .gz .h5 .ico .jar .jpeg .jpg .lz4 .mkv .mov .mp3 .mp4 .npy .npz .o .obj .ogg .onnx .otf .parquet
    .pdf .pickle .pkl .png .ppt .pptx .pt .pth .pyc .pyd .pyo .safetensors .so .sqlite .svgz .tar
    .tgz .tif .tiff .ttf .wav .webm .webp .whl .woff .woff2 .xls .xlsx .xz .zip .zst
    """.split()
)

class PreparationStopped(Exception):
    """should_stop() said yes while data was being read, tokenized or trained on; nothing was cached."""


_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Streaming reads split the file into pieces of about this size, at a newline where there is one.
CHUNK_BYTES = 1 << 20


def text_files(path: str | os.PathLike[str]) -> list[Path]:
    """The text files of a corpus: the file itself, or a folder walked recursively in sorted order.

    Hidden files and folders (a leading dot: .git, .venv), files with a binary extension and empty
    files (a package's __init__.py) are skipped in a folder; a single file named directly is kept
    and checked when read. The order is by relative path, so a folder always gives the same stream.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"no such file or folder: {root}", field="dataset")
    if root.is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() in BINARY_SUFFIXES:
                continue
            candidate = Path(dirpath) / name
            if candidate.is_file() and candidate.stat().st_size > 0:
                found.append(candidate)
    if not found:
        raise UserError(
            f"no text files in {root} (hidden, empty and binary-type files are skipped)", field="dataset"
        )
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _not_utf8(path: Path, data: bytes, bad_at: int, base_offset: int, base_line: int) -> UserError:
    """The message for an invalid byte at `bad_at` of `data`, which starts at file offset `base_offset`."""
    line = base_line + data.count(b"\n", 0, bad_at)
    return UserError(
        f"{path} is not UTF-8: invalid byte 0x{data[bad_at]:02X} at line {line}, "
        f"byte offset {base_offset + bad_at}; convert it with iconv -f latin1 -t utf-8",
        field="dataset",
    )


def _check_head(path: Path, head: bytes) -> None:
    if head.startswith(_UTF16_BOMS):
        raise UserError(f"{path} is UTF-16, not UTF-8; convert it with iconv -f utf-16 -t utf-8", field="dataset")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def read_text(path: Path) -> str:
    """The whole file as normalised text, or a UserError saying why it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", field="dataset") from None
    _check_head(path, data[:2])
    start = len(_BOM) if data.startswith(_BOM) else 0
    nul = data.find(b"\0", start)
    if nul >= 0:
        raise UserError(f"not a text file: NUL byte at offset {nul} in {path}", field="dataset")
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data, start + exc.start, 0, 1) from None
    if not text:
        raise UserError(f"file is empty: {path}", field="dataset")
    return _normalise_newlines(text)


def iter_text(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The file's normalised text in pieces of about `chunk_bytes`, in bounded memory.

    Pieces end at a newline where the file has one within the chunk, else at a character boundary;
    joined, they equal `read_text(path)`. The same checks and messages as `read_text` apply, raised
    when the reader reaches the bad byte (an empty file fails before the first piece).
    """
    for text, _ in iter_pieces(path, chunk_bytes):
        yield text


def check_text_files(files: Iterable[Path], should_stop: Callable[[], bool] | None = None) -> int:
    """Read every file through the same checks as read_text, in bounded memory; the total bytes.

    For a preflight that must name a bad file before anything heavy starts (RELIABILITY.md D1-D3).
    """
    total = 0
    for path in files:
        if should_stop is not None and should_stop():
            break
        for _, n_bytes in iter_pieces(Path(path), 8 * CHUNK_BYTES):
            total += n_bytes
    return total


def iter_pieces(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, int]]:
    """As iter_text, with the number of file bytes each piece came from (for progress in bytes)."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", field="dataset") from None
    with handle:
        offset, line = 0, 1  # file offset and line number where `carry` starts
        carry = handle.read(len(_BOM))
        _check_head(path, carry)
        if carry == _BOM:
            offset, carry = len(_BOM), b""
        consumed = 0  # file bytes accounted for in the pieces yielded so far (the BOM goes with the first)
        pending_cr = False  # a piece that ended in "\r" may be followed by the "\n" of a CRLF
        seen_text = False
        while True:
            block = handle.read(chunk_bytes)
            data = carry + block
            if not data:
                break
            cut = len(data)
            if block:
                cut = data.rfind(b"\n") + 1 or _char_boundary(data)
                if cut == 0:
                    if len(data) <= chunk_bytes + 4:
                        carry = data  # no character has ended yet: read on
                        continue
                    cut = len(data)  # a long run of continuation bytes: invalid, let decode say so
            piece, carry = data[:cut], data[cut:]
            nul = piece.find(b"\0")
            if nul >= 0:
                raise UserError(f"not a text file: NUL byte at offset {offset + nul} in {path}", field="dataset")
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, piece, exc.start, offset, line) from None
            offset += len(piece)
            line += piece.count(b"\n")
            if pending_cr and text.startswith("\n"):
                text = text[1:]
            pending_cr = text.endswith("\r")
            text = _normalise_newlines(text)
            if text:
                seen_text = True
                yield text, offset - consumed
                consumed = offset
        if not seen_text:
            raise UserError(f"file is empty: {path}", field="dataset")


def _char_boundary(data: bytes) -> int:
    """The last index in `data` where a UTF-8 character starts (continuation bytes are 10xxxxxx)."""
    i = len(data) - 1
    while i > 0 and len(data) - i <= 4 and (data[i] & 0xC0) == 0x80:
        i -= 1
    return i


def stdlib_corpus() -> list[Path]:
    """The Python standard library's own .py sources: a demo corpus every machine has, offline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for name in sorted(filenames):
            candidate = Path(dirpath) / name
            if name.endswith(".py") and candidate.stat().st_size > 0:
                files.append(candidate)
    if not files:
        raise UserError(f"no Python sources found in the standard library folder {root}")
    return sorted(files, key=lambda p: p.relative_to(root).parts)


# (resolved path, size, mtime_ns) -> sha256 of the content; files do not change without their
# mtime or size changing in practice, and a stale entry only costs a re-tokenization elsewhere.
_content_hashes: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, should_stop: Callable[[], bool] | None = None) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _content_hashes.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(8 * CHUNK_BYTES), b""):
                digest.update(block)
                if should_stop is not None and should_stop():
                    raise PreparationStopped(f"stopped while hashing {path}")
        cached = _content_hashes[key] = digest.hexdigest()
    return cached


def corpus_fingerprint(files: Iterable[Path], should_stop: Callable[[], bool] | None = None) -> str:
    """sha256 over the files' names (relative to their common folder), sizes and contents, in order.

    Moving the corpus folder keeps the fingerprint; renaming, reordering or editing a file changes it.
    Content hashes are remembered per (path, size, mtime) for the life of the process.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise UserError("the corpus holds no files", field="dataset")
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    digest = hashlib.sha256(b"llm-wizard corpus v1\n")
    for path in resolved:
        name = path.relative_to(common).as_posix()
        digest.update(f"{name}\0{path.stat().st_size}\0{file_sha256(path, should_stop)}\n".encode())
    return digest.hexdigest()
