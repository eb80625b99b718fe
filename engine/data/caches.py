"""What llm-wizard keeps in its cache folder (engine/paths.py cache_dir), listed and cleared by `llm-wizard cache`.

Kinds: `tokens` (a corpus tokenized once: a .bin with its .json sidecar), `tokenizers` (one trained tokenizer a
folder), `estimates` (an architecture's activations measured on a reduced copy, one JSON file a key), `models`
and `datasets` (Hub downloads, when HF_HUB_CACHE points under the cache folder), and
`other` (anything else the product put there, e.g. a llama.cpp build). Every entry is safe to delete: the next
run that needs it builds or downloads it again.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import UserError

KINDS = ("tokens", "tokenizers", "estimates", "models", "datasets", "other")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    path: str
    bytes: int
    modified: float  # unix time of the newest file
    sources: tuple[str, ...] = ()  # the data files it was made from, where recorded

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sources": list(self.sources), "age_s": round(time.time() - self.modified, 1)}


def _size_and_time(path: Path) -> tuple[int, float]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    stats = [p.stat() for p in files]
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=path.stat().st_mtime)


def _sources(meta: Path) -> tuple[str, ...]:
    try:
        found = json.loads(meta.read_text()).get("sources", [])
        return tuple(str(s) for s in found) if isinstance(found, list) else ()
    except (OSError, ValueError, AttributeError):
        return ()


def _siblings(token_file: Path) -> list[Path]:
    """A token file's sidecar, and an example file's mask and index."""
    return [token_file.with_suffix(s) for s in (".json", ".mask", ".idx")]


def _entry(kind: str, path: Path, *extra: Path, name: str | None = None, meta: Path | None = None) -> Entry:
    size, modified = _size_and_time(path)
    for p in extra:
        if p.exists():
            s, m = _size_and_time(p)
            size, modified = size + s, max(modified, m)
    return Entry(kind, name or path.name, str(path), size, modified, _sources(meta) if meta else ())


def entries(kind: str | None = None) -> list[Entry]:
    """Every cache entry (of `kind`), oldest first. A cache folder owned by another user is refused."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"--kind: one of {', '.join(KINDS)}, got {kind!r}", field="kind")
    root = paths.cache_dir()
    if not root.is_dir():
        return []
    paths.private_dir(root, deep=False)  # refuses another user's folder
    found: list[Entry] = []
    for top in sorted(root.iterdir()):
        if top.name.startswith(".") or top.is_symlink():
            continue
        if top.name in ("tokens", "tokenizers", "estimate") and top.is_dir():
            paths.private_dir(top)  # what a former version left readable to others is narrowed
        if top.name == "tokens" and top.is_dir():
            found += [_entry("tokens", p, *_siblings(p), name=p.stem, meta=p.with_suffix(".json"))
                      for p in top.glob("*.bin") if not p.name.startswith(".")]
        elif top.name == "tokenizers" and top.is_dir():
            found += [_entry("tokenizers", p, meta=p / "llm_wizard_tokenizer.json") for p in top.iterdir()
                      if p.is_dir() and not p.name.startswith(".")]
        elif top.name == "estimate" and top.is_dir():  # engine/models/shape_cache.py
            found += [_entry("estimates", p, name=p.stem) for p in top.glob("*.json") if not p.name.startswith(".")]
        elif top.name == "hub" and top.is_dir():  # huggingface_hub's layout: models--org--name, datasets--...
            for p in top.iterdir():
                hub_kind, _, repo = p.name.partition("--")
                if p.is_dir() and hub_kind in ("models", "datasets"):
                    found.append(_entry(hub_kind, p, name=repo.replace("--", "/")))
        else:
            found.append(_entry("other", top))
    return sorted((e for e in found if kind is None or e.kind == kind), key=lambda e: e.modified)


def select(kind: str | None = None, older_than_s: float | None = None) -> list[Entry]:
    """The entries `cache clear` would delete."""
    now = time.time()
    return [e for e in entries(kind) if older_than_s is None or now - e.modified > older_than_s]


def remove(chosen: list[Entry]) -> int:
    """Delete the entries; the bytes freed. Only paths inside the cache folder are touched."""
    root = paths.cache_dir().resolve()
    freed = 0
    for e in chosen:
        path = Path(e.path)
        if root not in path.resolve().parents:
            continue
        targets = [path, *_siblings(path)] if e.kind == "tokens" else [path]
        for t in targets:
            if t.is_dir() and not t.is_symlink():
                shutil.rmtree(t, ignore_errors=True)
            else:
                t.unlink(missing_ok=True)
        freed += e.bytes
    return freed


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '90s' or a plain number of days, in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    t = text.strip().lower()
    unit = units.get(t[-1:], None)
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"--older-than: a duration such as 30d, 12h or 45m, got {text!r}", field="older_than")
    return value * (unit or 86400)
