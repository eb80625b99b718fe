"""The data files and splits of a Hub-style dataset folder, found by the Hub's own conventions.

Such a folder is what `git clone` of a Hub dataset or huggingface_hub.snapshot_download gives: a
README.md (documentation, whose YAML front matter may declare `configs:`), .gitattributes and the data
files. The rules follow datasets' data_files.py, in order:
1. the README's `configs:`: the config named by `subset`, else the one marked `default: true`, else the
   one named "default", else the only one; its `data_files` (a pattern, a list, or per split) are globbed
   from its `data_dir` (default: the folder);
2. sharded names directly in data/: `data/{split}-00000-of-00001*.*` (any split name);
3. split keywords in folder names, else in file names (train/training, validation/valid/dev/val,
   test/testing/eval/evaluation, between separators `-._ ` or digits, case as written);
4. else every data file belongs to "train".
README.md, dataset_info.json and the like are never data; hidden files and `__` folders are skipped.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from engine.data.file_rows import kind_of
from engine.errors import UserError

SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
IGNORED = frozenset({"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip",
                     "dataset_dict.json", "state.json"})
_SEP = r"[-._ 0-9]"
_IN_DIR = {s: re.compile(rf"^(?:.*{_SEP})?(?:{'|'.join(k)})(?:{_SEP}.*)?$") for s, k in SPLIT_KEYWORDS.items()}
_IN_FILE = {s: re.compile(rf"^(?:.*{_SEP})?(?:{'|'.join(k)}){_SEP}.*$") for s, k in SPLIT_KEYWORDS.items()}
_SHARDED = re.compile(r"^(\w+(?:\.\w+)*)-[0-9]{5}-of-[0-9]{5}.*\..*$")

Splits = dict[str, list[Path]]


def hub_kind(path: Path) -> str:
    """The kind of a data file in a Hub folder ("" for files that are not data)."""
    return kind_of(path) or ("text" if path.suffix.lower() == ".txt" else "")


def data_files(base: Path) -> list[Path]:
    """Every data file under `base` (not hidden, not in a `__` folder, not a metadata file), in path order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and name not in IGNORED and hub_kind(path) and path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(base).parts)


def by_convention(base: Path, files: list[Path]) -> Splits | None:
    """The splits that rules 2-3 find among `files`; None when they find none (rule 4 then applies)."""
    relative = {f: f.relative_to(base).parts for f in files}
    sharded: Splits = {}
    for f, parts in relative.items():
        match = _SHARDED.match(parts[-1]) if len(parts) == 2 and parts[0] == "data" else None
        if match:
            sharded.setdefault(match[1], []).append(f)
    if sharded:
        return {s: sharded[s] for s in ordered(sharded)}
    for patterns, names in ((_IN_DIR, lambda p: p[:-1]), (_IN_FILE, lambda p: p[-1:])):
        found = {s: [f for f in files if any(pattern.match(n) for n in names(relative[f]))]
                 for s, pattern in patterns.items()}
        found = {s: fs for s, fs in found.items() if fs}
        if found:
            return found
    return None


def ordered(splits: Any) -> list[str]:
    """train, validation, test first (the Hub's order), then the others by name."""
    known = [s for s in SPLIT_KEYWORDS if s in splits]
    return known + sorted(s for s in splits if s not in SPLIT_KEYWORDS)


def canonical(split: str) -> str:
    """The Hub's name for a split keyword ("dev" -> "validation"); other names unchanged."""
    return next((s for s, keywords in SPLIT_KEYWORDS.items() if split in keywords), split)


def readme_configs(root: Path) -> list[dict[str, Any]]:
    """The `configs:` of README.md's YAML front matter; [] when there is none."""
    readme = root / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
    if not text.startswith("---"):
        return []
    end = text.find("\n---", 3)
    import yaml

    try:
        meta = yaml.safe_load(text[3:end if end >= 0 else None])
    except yaml.YAMLError as exc:
        raise UserError(f"{readme}: its YAML front matter cannot be read ({str(exc).splitlines()[0]})",
                        field="dataset") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not configs:
        return []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise UserError(f"{readme}: `configs:` must be a list of mappings with config_name and data_files",
                        field="dataset")
    return configs


def config_splits(root: Path, configs: list[dict[str, Any]], subset: str) -> tuple[str, Splits]:
    """(config name, its splits) of the config that `subset` (or the default) picks."""
    names = [str(c.get("config_name", "default")) for c in configs]
    if subset:
        if subset not in names:
            raise UserError(f"{root / 'README.md'} has no config {subset!r}; its configs: {', '.join(names)}",
                            field="data.subset")
        index = names.index(subset)
    else:
        marked = [i for i, c in enumerate(configs) if c.get("default") is True]
        index = marked[0] if marked else names.index("default") if "default" in names else 0
        if not marked and "default" not in names and len(names) > 1:
            raise UserError(f"{root} holds several configs ({', '.join(names)}): choose one with data.subset",
                            field="data.subset")
    config = configs[index]
    base = root / str(config.get("data_dir") or "")
    patterns = config.get("data_files")
    if patterns is None:
        files = data_files(base)
        return names[index], by_convention(base, files) or ({"train": files} if files else {})
    splits: Splits = {}
    for split, globs in _per_split(root, patterns).items():
        matched: list[Path] = []
        for pattern in globs:
            hits = sorted(Path(base, p) for p in glob.glob(str(pattern), root_dir=base, recursive=True))
            hits = [h for h in hits if h.is_file() and h.name not in IGNORED]
            if not hits:
                raise UserError(f"{root / 'README.md'}: config {names[index]!r}, split {split!r}: no file matches "
                                f"{pattern!r} in {base}", field="dataset")
            matched += [h for h in hits if h not in matched]
        splits[split] = matched
    return names[index], splits


def _per_split(root: Path, patterns: Any) -> dict[str, list[str]]:
    """data_files as {split: [patterns]}: a string or a list is "train"; [{split, path}] or {split: path}."""
    def listed(value: Any) -> list[str]:
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    if isinstance(patterns, dict):
        return {str(k): listed(v) for k, v in patterns.items()}
    if isinstance(patterns, list) and any(isinstance(p, dict) for p in patterns):
        if not all(isinstance(p, dict) and "split" in p and "path" in p for p in patterns):
            raise UserError(f"{root / 'README.md'}: each data_files entry needs a split and a path", field="dataset")
        return {str(p["split"]): listed(p["path"]) for p in patterns}
    return {"train": listed(patterns)}
