"""A dataset by its Hub id: the data files a subset and split need, downloaded into the Hub cache.

The dataset card's `configs:` (README.md front matter, as `datasets` reads it) says which files make up a
subset and, per split, which files it has; without it, a folder or file name equal to the subset and file
names carrying the split word (train, validation, test) decide; failing those, every data file comes.
The result is the snapshot folder, laid out as on the Hub, so a reader of Hub-style folders takes it as is.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.hub import repo as hubrepo
from engine.hub.connection import HubError
from engine.hub.download import Progress, download

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tsv", ".txt", ".jsonl.gz", ".json.gz",
                 ".csv.gz", ".txt.gz", ".jsonl.zst")
SPLIT_WORDS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def fetch_dataset(repo_id: str, *, subset: str | None = None, split: str | None = None,
                  revision: str | None = None, progress: Callable[[Progress], None] | None = None,
                  interval: float = 1.0, field: str = "data.path",
                  should_stop: Callable[[], bool] | None = None) -> Path:
    """Download what `subset` / `split` of the Hub dataset `repo_id` need (all data files when neither
    narrows them); returns the local snapshot folder (`<HF cache>/datasets--org--name/snapshots/<commit>`)."""
    info = hubrepo.repo_info(repo_id, kind="dataset", revision=revision, field=field)
    card = _card(info, field)
    names = data_files(info, card, subset, split, field)
    keep = tuple(n for n in (f.path for f in info.files) if n in names or n == "README.md")
    return download(info, keep, field=field, progress=progress, interval=interval, ref=revision or "main",
                    should_stop=should_stop)


def _card(info: hubrepo.RepoInfo, field: str) -> dict[str, Any]:
    """The README's YAML front matter (empty when it has none)."""
    if not any(f.path == "README.md" for f in info.files):
        return {}
    import yaml

    folder = download(info, ("README.md",), field=field)
    text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    m = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    try:
        meta = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _is_data(path: str) -> bool:
    return path.lower().endswith(DATA_SUFFIXES) and path.rsplit("/", 1)[-1] not in ("dataset_infos.json",
                                                                                    "dataset_info.json")


def data_files(info: hubrepo.RepoInfo, card: dict[str, Any], subset: str | None, split: str | None,
               field: str = "data.path") -> set[str]:
    """The repo files `subset` and `split` need."""
    files = [f.path for f in info.files if _is_data(f.path)]
    configs = [c for c in card.get("configs") or [] if isinstance(c, dict) and c.get("config_name")]
    if configs:
        chosen = next((c for c in configs if c["config_name"] == subset), None) if subset else \
            next((c for c in configs if c.get("default")), None) or \
            next((c for c in configs if c["config_name"] == "default"), configs[0])
        if chosen is None:
            names = ", ".join(str(c["config_name"]) for c in configs)
            raise HubError(f"data.subset: {info.repo_id} has no subset {subset!r}; its subsets: {names}",
                           field="data.subset")
        patterns = _patterns(chosen.get("data_files"), split)
        if patterns:
            picked = {f for f in files if any(fnmatch.fnmatch(f, p) or f == p for p in patterns)}
            if picked:
                return picked
    if subset:
        picked = [f for f in files if subset in f.split("/")[:-1] or f.rsplit("/", 1)[-1].startswith(subset)]
        if not picked:
            folders = sorted({f.split("/")[0] for f in files if "/" in f})
            hint = f"; its folders: {', '.join(folders)}" if folders else ""
            raise HubError(f"data.subset: {info.repo_id} has no files for subset {subset!r}{hint}",
                           field="data.subset")
        files = picked
    if split:
        words = SPLIT_WORDS.get(split, (split,))
        named = [f for f in files if any(re.search(rf"(^|[/_.-]){w}([/_.-]|$)", f) for w in words)]
        files = named or files
    return set(files)


def _patterns(data_files: Any, split: str | None) -> list[str]:
    """The file patterns of a card's `data_files`: a string, a list of strings, or [{split, path}]."""
    if isinstance(data_files, str):
        return [data_files]
    out: list[str] = []
    for item in data_files or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and (split is None or item.get("split") == split):
            paths = item.get("path")
            out += [paths] if isinstance(paths, str) else [p for p in paths or [] if isinstance(p, str)]
    return out
