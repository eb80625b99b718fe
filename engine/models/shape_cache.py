"""The private cache of what the estimator reads off a built model: parameter templates and activation profiles.

One JSON file per key under the product's cache folder (engine.paths.cache_dir()/estimate), the folder 0700 and
the files 0600 (a config can name a private model). A key hashes the config, what was measured, and the versions
of the libraries that decide the model's code (transformers, torch, peft), so an upgrade measures again. A file
that cannot be read is measured again, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = 2  # raised when what is stored changes meaning


def folder() -> Path:
    from engine.paths import cache_dir

    return cache_dir() / "estimate"


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("transformers", "torch", "peft"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = ""
    return out


def key(kind: str, config: dict[str, Any], **what: Any) -> str:
    text = json.dumps({"format": FORMAT, "kind": kind, "config": config, "what": what, "versions": _versions()},
                      sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def read(name: str) -> Any | None:
    try:
        return json.loads((folder() / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write(name: str, value: Any) -> None:
    """Atomically, private; a cache that cannot be written only costs the next estimate a measurement."""
    base = folder()
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o700)
        tmp = base / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, base / f"{name}.json")
    except OSError:
        pass
