"""Human output with Rich, machine output as JSON: the two ways every command reports."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

_out: Console | None = None
_err: Console | None = None


def out() -> Console:
    global _out
    if _out is None:
        _out = Console(highlight=False)
    return _out


def err() -> Console:
    global _err
    if _err is None:
        _err = Console(stderr=True, highlight=False)
    return _err


def print_json(obj: Any) -> None:
    """One JSON document on stdout; dataclasses are converted by the caller (to_dict)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def quiet_loading() -> None:
    """transformers' weight-loading bar and info lines off, and the notices libraries print while loading
    (deprecations, bitsandbytes' optional kernels): generate, chat and export say what they do themselves."""
    import logging as std_logging
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("bitsandbytes", "kernels"):
        std_logging.getLogger(name).setLevel(std_logging.ERROR)
