"""What must hold around a checkpoint save: room on the disk, a disk-full error named as one, finite state.

- `disk_full(exc, folder)`: torch reports a full disk as `[enforce fail at inline_container.cc] unexpected
  pos` (with `basic_ios::clear: iostream error` as its context), never as ENOSPC. An error counts as
  disk full when its chain carries ENOSPC/EFBIG/EDQUOT, or when it is one of torch's stream errors and
  the disk (or the process's file-size limit, RLIMIT_FSIZE) leaves no room (RELIABILITY C4).
- `room_problem(folder, needed)`: checked before each save; an atomic save needs room for one more
  checkpoint next to the ones kept (C5).
- `nonfinite_state(params, optimizer)`: names of tensors holding NaN/inf; such state is never saved (C10).
- `storage_error(exc, folder)`: any write that failed because the storage did (full, read-only, quota, I/O
  error), named with where; `folder_problem(folder)`: the same read off the file system by a reader, for a
  job that could not say so itself (RELIABILITY C13).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.processes import pid_alive

FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
UNWRITABLE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
STORAGE_ERRNOS = FULL_ERRNOS | UNWRITABLE_ERRNOS | {errno.EIO}
LOW_BYTES = 64 << 10  # a reader calls a disk with less free than this full: a status or event line may not fit
_FULL_TEXT = re.compile(r"No space left on device|File too large|Disk quota exceeded|os error (28|27|122)\b")
_STREAM_TEXT = re.compile(r"inline_container|iostream error|PytorchStreamWriter|file write failed")
MARGIN = 1.1  # a checkpoint can grow a little between saves (optimizer moments appear after the first step)


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def file_size_limit() -> int | None:
    """The soft RLIMIT_FSIZE in bytes, or None when files may grow without limit."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def disk_full(exc: BaseException, folder: Path, needed: int = 0) -> str | None:
    """A one-line reason if `exc` means the disk (or the file-size limit) is full, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return f"disk full ({os.strerror(e.errno)}) while writing to {folder}"
        if _FULL_TEXT.search(str(e)):
            return f"disk full ({_FULL_TEXT.search(str(e)).group(0)}) while writing to {folder}"  # type: ignore[union-attr]
    if not any(_STREAM_TEXT.search(str(e)) for e in _chain(exc)):
        return None
    free = _free(folder)
    limit = file_size_limit()
    if free is not None and free < max(needed, 1 << 20):
        return f"disk full ({_mb(free)} free) while writing to {folder}"
    if limit is not None:
        return f"disk full (files are limited to {_mb(limit)} here) while writing to {folder}"
    return None


def storage_error(exc: BaseException, folder: Path) -> str | None:
    """"disk full (...) at <path>" / "run folder not writable (...) at <path>" / "storage error (...) at
    <path>" when `exc` (or its cause chain) is an OSError of the storage, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return _errno_reason(e.errno, Path(e.filename).parent if e.filename else folder)
    return None


def _errno_reason(code: int, where: Path) -> str:
    what = ("disk full" if code in FULL_ERRNOS else "run folder not writable" if code in UNWRITABLE_ERRNOS
            else "storage error")
    return f"{what} ({os.strerror(code)}) at {where}"


def folder_problem(folder: Path, *, probe: bool = False) -> str | None:
    """What a reader can see of a storage failure at `folder`: a read-only file system, no write permission,
    or (almost) no free space; with `probe`, also what only a write shows (a file system the kernel turned
    read-only after an error still says rw to statvfs): an empty file created and removed. None when none."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return _errno_reason(errno.EROFS, Path(folder))
    if not os.access(folder, os.W_OK):
        return _errno_reason(errno.EACCES, Path(folder))
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < LOW_BYTES:
        return f"disk full ({_mb(free)} free) at {folder}"
    if probe:
        path = Path(folder) / f".write-probe-{os.getpid()}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            path.unlink()
        except FileExistsError:
            pass
        except OSError as e:
            return storage_error(e, Path(folder))
    return None


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def room_problem(folder: Path, needed: int) -> str | None:
    """Why a save of about `needed` bytes would not fit in `folder`'s file system, or None."""
    free = _free(folder)
    want = int(needed * MARGIN)
    if free is not None and free < want:
        return (f"disk nearly full: only {_mb(free)} free on the disk of {folder}, a checkpoint needs about "
                f"{_mb(want)}: "
                "free space (or lower checkpoint.keep and delete old checkpoints), then resume")
    return None


def nonfinite_state(params: Iterable[Any], optimizer: Any = None, limit: int = 5) -> list[str]:
    """Up to `limit` names of parameters or optimizer-state tensors that hold NaN or inf."""
    import torch

    bad: list[str] = []
    params = list(params)
    for i, p in enumerate(params):
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            bad.append(f"parameter {i}")
    if optimizer is not None:
        for i, p in enumerate(params):
            for key, t in optimizer.state.get(p, {}).items():
                if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"optimizer {key} of parameter {i}")
    return bad[:limit]


def describe_pause(reason: str, last: str | None) -> str:
    kept = f"checkpoint {last} is intact" if last else "no earlier checkpoint exists"
    fix = "Make it writable" if "not writable" in reason else "Free space"
    return f"{reason}; {kept}. {fix}, then resume (the save is retried, also by itself)"


def clean_leftovers(run: Path) -> list[str]:
    """Remove what killed saves left behind (RELIABILITY C8): only our own patterns, only inside `run`,
    never following a link out of it. Called by the run's sole owner (after taking its lock)."""
    from engine.checkpoints import store as checkpoint

    run = Path(run)
    removed = checkpoint.clean_tmp(run)
    for p in list(run.iterdir()):
        ours = p.name in (".tmp-final", ".tmp-model") or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()
                                          and not _writer_alive(p.name))
        if not ours:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def _writer_alive(name: str) -> bool:
    """runfolder.write_text_atomic names its temporary `.<file>.<pid>.tmp`: a live writer's is left alone."""

    pid = name[: -len(".tmp")].rpartition(".")[2]
    return pid.isdigit() and pid_alive(int(pid))
