"""Temporary files of the data caches: written as `.tmp-<key>-<pid>.*` next to their final name, then renamed.

Shared by the token files (token_cache.py) and the trained tokenizers (tokenizer_train.py), which both clean
up after a process that was killed while writing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.processes import pid_alive


def remove_stale_temps(folder: Path) -> None:
    """Delete `.tmp-<key>-<pid>.*` left by a process that was killed while writing (SIGKILL, OOM)."""
    for tmp in folder.glob(".tmp-*"):
        pid = tmp.name.split(".")[1].rsplit("-", 1)[-1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
