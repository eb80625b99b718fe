"""job.log through a full or read-only disk: what the job prints is held in memory, never raised (RELIABILITY C13).

A detached job's stdout and stderr are job.log. On a full disk a plain `print` (or the traceback printed for
an error) raises OSError, and the job dies in its own error handling with nothing said anywhere. `install()`
puts both streams behind a writer that keeps the newest `LIMIT` bytes it could not write and writes them
first once the disk takes them again (`retry()`, also tried on every later write).
"""

from __future__ import annotations

import io
import os
import sys

LIMIT = 64 << 10
_writers: list[_HeldWriter] = []


class _HeldWriter(io.RawIOBase):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.held = b""
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self.held += data
        if len(self.held) > LIMIT:  # keep the newest: the error that ends a job is said last
            self.dropped += len(self.held) - LIMIT
            self.held = self.held[-LIMIT:]
        self.retry()
        return len(data)

    def retry(self) -> bool:
        """Write what is held; True when nothing is left."""
        if self.dropped and self.held:
            self.held = f"[{self.dropped} bytes of output lost: the disk refused them]\n".encode() + self.held
            self.dropped = 0
        while self.held:
            try:
                self.held = self.held[os.write(self.fd, self.held):]
            except OSError:
                return False
        return True


def install() -> None:
    """Route sys.stdout and sys.stderr (file descriptors 1 and 2) through held writers."""
    if _writers:
        return
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is not None:
            stream.flush()
        writer = _HeldWriter(fd)
        _writers.append(writer)
        wrapped = io.TextIOWrapper(writer, encoding="utf-8", errors="backslashreplace",  # type: ignore[arg-type]
                                   line_buffering=True, write_through=True)
        setattr(sys, name, wrapped)


def retry() -> bool:
    """Write what the disk refused so far; True when all of it is out."""
    return all(w.retry() for w in _writers)


def notice(message: str) -> None:
    """One line on stderr (job.log for a detached job), never raising."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
