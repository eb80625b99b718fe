"""Finding, reading and fingerprinting text corpora, and the messages for bad files (RELIABILITY D1-D3, D11, M2)."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest

from engine.data.corpus import (
    check_text_files,
    corpus_fingerprint,
    iter_pieces,
    iter_text,
    read_text,
    stdlib_corpus,
    text_files,
)
from engine.errors import UserError


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(UserError, match=f"no such file or folder: {missing}"):
        text_files(missing)


def test_folder_walk_is_sorted_and_skips_hidden_binary_and_empty(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "b")
    write(tmp_path / "a" / "z.md", "z")
    write(tmp_path / "a" / "y.py", "y = 1\n")
    write(tmp_path / "README", "no extension is text too")
    write(tmp_path / ".hidden.txt", "hidden")
    write(tmp_path / ".git" / "config.txt", "hidden folder")
    write(tmp_path / "pic.png", b"\x89PNG\r\n")
    write(tmp_path / "weights.safetensors", b"\0\0")
    write(tmp_path / "pkg" / "__init__.py", "")
    found = [p.relative_to(tmp_path).as_posix() for p in text_files(tmp_path)]
    assert found == ["README", "a/y.py", "a/z.md", "b.txt"]


def test_a_file_named_directly_is_kept(tmp_path: Path) -> None:
    target = write(tmp_path / "data.bin", b"named on purpose")
    assert text_files(target) == [target]


def test_folder_without_text_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "pic.png", b"\x89PNG")
    write(tmp_path / ".notes.txt", "hidden")
    write(tmp_path / "empty.txt", "")
    with pytest.raises(UserError, match=f"no text files in {tmp_path}"):
        text_files(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(UserError, match=f"^file is empty: {empty}$"):
        read_text(empty)
    with pytest.raises(UserError, match=f"^file is empty: {empty}$"):
        list(iter_text(empty))
    only_bom = write(tmp_path / "bom.txt", b"\xef\xbb\xbf")
    with pytest.raises(UserError, match="file is empty"):
        read_text(only_bom)


def test_binary_file_names_the_nul_offset(tmp_path: Path) -> None:
    binary = write(tmp_path / "blob.txt", b"hello\nwor\0ld")
    expected = f"^not a text file: NUL byte at offset 9 in {binary}$"
    with pytest.raises(UserError, match=expected):
        read_text(binary)
    with pytest.raises(UserError, match=expected):
        list(iter_text(binary, chunk_bytes=4))


def test_latin1_reports_line_and_byte_offset(tmp_path: Path) -> None:
    latin1 = write(tmp_path / "latin1.txt", "first line\nsecond\ncaf\u00e9 au lait\n".encode("latin-1"))
    # "first line\n" = 11 bytes, "second\n" = 7, "caf" = 3: the é is byte 21, on line 3.
    expected = (
        f"{latin1} is not UTF-8: invalid byte 0xE9 at line 3, byte offset 21; "
        "convert it with iconv -f latin1 -t utf-8"
    )
    with pytest.raises(UserError) as caught:
        read_text(latin1)
    assert str(caught.value) == expected
    for chunk in (4, 5, 16, 1 << 20):  # the streaming reader finds the same place at any chunk size
        with pytest.raises(UserError) as caught:
            list(iter_text(latin1, chunk_bytes=chunk))
        assert str(caught.value) == expected, chunk


def test_utf16_is_recognised(tmp_path: Path) -> None:
    utf16 = write(tmp_path / "u16.txt", "hi there".encode("utf-16"))
    with pytest.raises(UserError, match="is UTF-16, not UTF-8; convert it with iconv -f utf-16"):
        read_text(utf16)


def test_bom_and_line_endings_are_normalised(tmp_path: Path) -> None:
    windows = write(tmp_path / "win.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\r\n\r\nfour")
    assert read_text(windows) == "one\ntwo\nthree\n\nfour"


def test_streaming_pieces_join_to_the_whole_text(tmp_path: Path) -> None:
    # Multibyte characters, CRLF pairs and a long line without newlines, cut at every small size.
    text = "\ufeff" + "\u00e9t\u00e9 \U0001f600\r\n" * 7 + "x\u4e2d" * 40 + "\r\r\nend\r"
    path = write(tmp_path / "mixed.txt", text)
    whole = read_text(path)
    assert "\r" not in whole and not whole.startswith("\ufeff")
    size = path.stat().st_size
    for chunk in range(1, 40):
        pieces = list(iter_pieces(path, chunk_bytes=chunk))
        assert "".join(p for p, _ in pieces) == whole, chunk
        assert sum(n for _, n in pieces) <= size
        assert max(len(p.encode()) for p, _ in pieces) <= 2 * chunk + 4  # bounded: at most two chunks
    assert check_text_files([path]) == size


def test_stdlib_corpus_is_the_standard_library_without_tests() -> None:
    files = stdlib_corpus()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert len(files) > 100
    assert all(f.suffix == ".py" and f.stat().st_size > 0 for f in files)
    rel = [f.relative_to(root).parts for f in files]
    assert not any(set(parts) & {"test", "tests", "idlelib", "site-packages"} for parts in rel)
    assert root / "os.py" in files
    assert rel == sorted(rel)
    assert stdlib_corpus() == files  # the same order every time


def test_fingerprint_follows_names_and_contents_not_location(tmp_path: Path) -> None:
    a = write(tmp_path / "one" / "a.txt", "alpha\n")
    b = write(tmp_path / "one" / "sub" / "b.txt", "beta\n")
    first = corpus_fingerprint([a, b])
    assert len(first) == 64 and corpus_fingerprint([a, b]) == first
    moved = tmp_path / "two"
    shutil.copytree(tmp_path / "one", moved)
    assert corpus_fingerprint([moved / "a.txt", moved / "sub" / "b.txt"]) == first
    assert corpus_fingerprint([b, a]) != first  # order is part of the token stream
    (moved / "a.txt").rename(moved / "c.txt")
    assert corpus_fingerprint([moved / "c.txt", moved / "sub" / "b.txt"]) != first
    write(b, "beta!\n")
    assert corpus_fingerprint([a, b]) != first


def test_fingerprint_can_be_stopped(tmp_path: Path) -> None:
    from engine.data.corpus import PreparationStopped

    files = [write(tmp_path / f"{i}.txt", f"file {i}\n") for i in range(3)]
    polls = []
    with pytest.raises(PreparationStopped):
        corpus_fingerprint(files, should_stop=lambda: polls.append(1) or len(polls) == 2)
    assert len(polls) == 2
