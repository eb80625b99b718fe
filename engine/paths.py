"""Where runs live (--runs-dir, else $LLM_WIZARD_RUNS, else $XDG_DATA_HOME/llm-wizard/runs) and the caches
(private to their owner, like the runs)."""

from __future__ import annotations

import os
from pathlib import Path


def runs_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LLM_WIZARD_RUNS")
    if env:
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "llm-wizard" / "runs"


def cache_dir() -> Path:
    """Token caches and trained tokenizers, keyed by content hash (safe to delete); in the user's home (a
    per-user root), made private by private_cache()."""
    env = os.environ.get("LLM_WIZARD_CACHE")
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "llm-wizard"


def private_dir(path: Path, *, deep: bool = True) -> Path:
    """`path` as a folder only its owner can read (RELIABILITY S9): created 0700 whatever the umask, an
    existing one narrowed to 0700 and the files in it to 0600; a folder owned by another user is refused,
    so nobody else's cache is ever read or written. `deep`: narrow everything under it too."""
    from engine.errors import UserError

    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise UserError(f"cache folder {path} belongs to another user (uid {st.st_uid}); point LLM_WIZARD_CACHE "
                        "at a folder of your own", field="cache")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    if deep:
        _narrow(path)
    return path


def _narrow(folder: Path) -> None:
    """Group and other bits off everything under `folder` (files and folders a former version left open)."""
    for entry in os.scandir(folder):
        if entry.is_symlink():
            continue
        mode = entry.stat(follow_symlinks=False).st_mode
        if mode & 0o077:
            os.chmod(entry.path, mode & 0o700)
        if entry.is_dir(follow_symlinks=False):
            _narrow(Path(entry.path))


def private_cache(kind: str) -> Path:
    """cache_dir()/<kind>, the root and the folder both private to their owner (private_dir)."""
    root = private_dir(cache_dir(), deep=False)  # not a Hub cache that may live under it
    return private_dir(root / kind)
