"""Hub datasets read from the local datasets cache (a dataset id with data.format = "hub").

`load(source)` gives the datasets.Dataset (memory-mapped Arrow) of (path, subset, split), read with the
Hub switched off for the call; `rows(source)` its rows, `size(source)` its cached bytes for progress.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from engine.data.rows import Row, arrow_rows
from engine.errors import UserError


def display_name(source: Any) -> str:
    return f"{source.path}{'/' + source.subset if source.subset else ''} [{source.split}]"


_hub_cache: dict[tuple[str, str, str, str], Any] = {}


def _datasets_cache() -> str:
    """Where datasets keeps prepared data, read from the environment now (datasets reads it at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.expanduser(os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets"))


def load(source: Any) -> Any:
    cache = _datasets_cache()
    key = (source.path, source.subset, source.split, cache)
    if key in _hub_cache:
        return _hub_cache[key]
    import datasets

    # Offline for this call only (datasets reads these at import; a model download later may go online).
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved_config = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    # Its "using the cached version" warnings and progress bars would scribble over the wizard's screen.
    verbosity, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(source.path, source.subset or None, split=source.split, cache_dir=cache)
    except ValueError as exc:  # an unknown split, or a subset that is not cached
        raise UserError(f"Hub dataset {display_name(source)}: {exc}",
                        field="data.subset" if "config" in str(exc) else "data.split") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not in the cache"
        raise UserError(
            f"Hub dataset {source.path!r} is not in the local cache and this machine works offline "
            f"({type(exc).__name__}). On a connected machine run: python -c \"import datasets; "
            f"datasets.load_dataset('{source.path}'{', ' + repr(source.subset) if source.subset else ''})\" "
            "and copy its ~/.cache/huggingface (or $HF_HOME) here, or export the data to JSONL/Parquet",
            field="data.path") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved_config
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    _hub_cache[key] = ds
    return ds


def size(source: Any) -> int:
    ds = load(source)
    return sum(os.path.getsize(f["filename"]) for f in ds.cache_files if os.path.exists(f["filename"])) or len(ds)




def rows(source: Any) -> Iterator[Row]:
    """Every row of the cached split, all columns."""
    yield from arrow_rows(load(source), display_name(source), lambda have, where: have, size(source))
