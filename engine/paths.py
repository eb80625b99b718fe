"""Where runs live: --runs-dir, else $LLM_WIZARD_RUNS, else $XDG_DATA_HOME/llm-wizard/runs."""

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
    """Token caches and trained tokenizers, keyed by content hash (safe to delete)."""
    env = os.environ.get("LLM_WIZARD_CACHE")
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "llm-wizard"
