"""Processes by pid: alive or not, and which process (a pid the kernel gave to another process since
does not count as the one recorded). Base layer: no engine imports."""

from __future__ import annotations

import os
from pathlib import Path


def pid_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), to tell a live job from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = stat[stat.rfind(")") + 2:].split()
    return None if fields_[0] == "Z" else fields_[19]


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    """Whether process `pid` runs (not a zombie) and, given its recorded `start`, is still that process."""
    if not pid:
        return False
    if Path("/proc").is_dir():
        now = pid_start_time(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
