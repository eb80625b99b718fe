"""Opening the run folder's line files (events.jsonl, commands.jsonl) so that no reader hangs or floods.

What a hostile or careless hand can leave in a run folder, and what every reader here does about it:
- a FIFO (or a device, a socket) in place of a file: opened with O_NONBLOCK and checked with fstat before
  any read, so `attach` and `control` answer with one line instead of blocking forever;
- a symbolic link (to /dev/zero, to another run's file, to a file of another user): refused (O_NOFOLLOW),
  the product never makes one;
- a file of many gigabytes: readers start from its end (`end_offset`, `tail_start`) and read bounded
  chunks, so time and memory do not grow with the log;
- a line of many megabytes (garbage, a file pasted in): bounded by `MAX_LINE`, skipped without ever
  holding it whole in memory.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from engine.errors import UserError

MAX_LINE = 1 << 20  # 1 MiB: far above any event the job writes (an eval with samples is a few KiB)
CHUNK = 4 << 20  # the most a reader takes in one read
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class NotAFile(UserError):
    """A run-folder file that is not a plain file of its own (a FIFO, a link, a device): said in one line."""


def kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "named pipe (FIFO)"),
                       (stat.S_ISDIR, "folder"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def not_regular(path: Path, mode: int) -> str:
    return (f"{path} is a {kind(mode)}, not the run's own file: nothing is read from it; remove it "
            f"(the job and the CLI write a new one)")


def open_regular(path: Path) -> int | None:
    """A read-only descriptor of `path` once checked to be a regular file (None: there is none yet);
    NotAFile otherwise. Never blocks, never follows a link."""
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW on a link
            raise NotAFile(not_regular(path, stat.S_IFLNK), field="run") from None
        if e.errno == errno.EISDIR:
            raise NotAFile(not_regular(path, stat.S_IFDIR), field="run") from None
        raise NotAFile(f"cannot read {path}: {e.strerror}", field="run") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAFile(not_regular(path, mode), field="run")
    return fd


def end_offset(path: Path) -> int:
    """The offset just after the file's last complete line, found from its end (0 when there is none):
    where a reader that wants only what comes next starts."""
    fd = open_regular(path)
    if fd is None:
        return 0
    try:
        size = os.fstat(fd).st_size
        back = min(size, 64 << 10)
        tail = os.pread(fd, back, size - back)
        nl = tail.rfind(b"\n")
        # no newline in the last 64 KiB: a long line still being written (or garbage) ends the file;
        # starting at its end skips it, whatever follows it is read
        return size - back + nl + 1 if nl >= 0 else size
    finally:
        os.close(fd)


def tail_start(path: Path, nbytes: int) -> int:
    """The offset of the first line that starts within the file's last `nbytes` bytes (0 for a smaller
    file): a reader of the recent history reads from there, whatever the file's size."""
    fd = open_regular(path)
    if fd is None:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size <= nbytes:
            return 0
        pos = size - nbytes
        while pos < size:  # the newline that ends the line cut in two (bounded by MAX_LINE: then its end)
            piece = os.pread(fd, min(64 << 10, size - pos), pos)
            nl = piece.find(b"\n")
            if nl >= 0:
                return pos + nl + 1
            pos += len(piece)
            if pos - (size - nbytes) > MAX_LINE or not piece:
                return pos
        return size
    finally:
        os.close(fd)


def size(path: Path) -> int:
    """The file's size (0 when there is none); NotAFile for a FIFO or a link."""
    fd = open_regular(path)
    if fd is None:
        return 0
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class Lines:
    """The complete lines of `path` from byte `offset` on, about `limit` bytes of them at most (None: to the
    end), read in chunks: iterate for (line, start, end, whole) and read `offset` after, where the next read
    goes on. A line over MAX_LINE comes as (its first and last bytes, start, end, False), never held whole;
    one still being written at the end of the file is left for the next read, unless it is already over
    MAX_LINE (then it is given up to the end of the file and the reader goes on from there)."""

    def __init__(self, path: Path, offset: int = 0, limit: int | None = None) -> None:
        self.path, self.offset, self.limit = path, offset, limit

    def __iter__(self) -> Iterator[tuple[bytes, int, int, bool]]:
        fd = open_regular(self.path)
        if fd is None:
            return
        first = self.offset
        buf, start, read_to = b"", self.offset, self.offset  # buf: the bytes from `start` read so far
        try:
            while self.limit is None or start - first < self.limit:
                piece = os.pread(fd, CHUNK, read_to)
                if not piece:
                    break
                read_to += len(piece)
                buf += piece
                p = 0
                while (nl := buf.find(b"\n", p)) >= 0:
                    if nl - p > MAX_LINE:
                        yield buf[p:p + 120] + buf[nl - MAX_LINE:nl], start + p, start + nl + 1, False
                    else:
                        yield buf[p:nl], start + p, start + nl + 1, True
                    p = nl + 1
                    self.offset = start + p
                buf, start = buf[p:], start + p
                if len(buf) > MAX_LINE:
                    end, last = _past_newline(fd, read_to)
                    yield buf[:120] + last, start, end, False
                    buf, start = b"", end
                    read_to = self.offset = end
        finally:
            os.close(fd)


def _past_newline(fd: int, pos: int) -> tuple[int, bytes]:
    """Past the newline of the over-long line read up to `pos`: (the offset after it, the line's last
    bytes, at most MAX_LINE); at the end of the file with no newline, (its size, b"")."""
    while piece := os.pread(fd, CHUNK, pos):
        nl = piece.find(b"\n")
        if nl >= 0:
            return pos + nl + 1, piece[max(0, nl - MAX_LINE):nl]
        pos += len(piece)
    return pos, b""
