"""One process owns a run folder at a time; a status left behind by a dead process says so (RELIABILITY P6, P7, O5).

The owner holds an exclusive `flock` on `<run>/job.lock` for its whole life and writes its pid into the
file. The kernel drops the lock when the process dies, however it dies (SIGKILL, host OOM killer), so a
stale lock file never blocks a resume. A second job for the same folder is refused naming the first pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import UserError

if TYPE_CHECKING:
    from engine.runfolder.status import Status

LOCK = "job.lock"
_held: dict[str, int] = {}  # run folder -> fd, so the lock lives as long as this process


def acquire(run: Path) -> None:
    """Take the run's lock for this process, or raise UserError naming the process that holds it."""
    key = str(Path(run).resolve())
    if key in _held:
        return
    fd = os.open(Path(run) / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise UserError(f"run {Path(run).name} is already being trained by process {pid or '?'}; "
                        f"watch it with `llm-wizard attach {Path(run).name}`", field="run", exit_code=2) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd


def release(run: Path) -> None:
    fd = _held.pop(str(Path(run).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


def holder(run: Path) -> int | None:
    """The pid holding the run's lock, or None when no live process holds it (checked, not guessed)."""
    path = Path(run) / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def stale_message(run: Path, status: Status) -> str:
    """What a status whose process is gone (or whose pid now belongs to another process) means to the user."""
    from engine.checkpoints import store as checkpoint

    history = [c for c in checkpoint.lineage(run) if checkpoint.verify(c.path, full=False) is None]
    where = f"resumable from step {history[0].step}" if history else "no checkpoint yet: start it again"
    return (f"stopped unexpectedly (the process {status.pid} is gone: killed, e.g. by the host's "
            f"out-of-memory killer, see dmesg, or the machine restarted); {where}")
