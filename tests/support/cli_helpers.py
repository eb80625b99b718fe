"""`llm-wizard ARGV` run in this process with a deadline: a CLI that hangs (a FIFO opened blocking) fails
its test instead of hanging the suite."""

from __future__ import annotations

import contextlib
import io
import threading
from typing import Any


def cli(*argv: str, timeout: float = 60.0) -> tuple[int | None, str]:
    """(exit code, stdout and stderr with whitespace runs joined) or (None, what it said) when it hung."""
    from tui.cli import main

    result: list[Any] = []
    buf = io.StringIO()

    def go() -> None:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            result.append(main(list(argv)))

    t = threading.Thread(target=go, daemon=True)  # a hung call is left behind, never joined at exit
    t.start()
    t.join(timeout)
    return (result[0] if result else None), " ".join(buf.getvalue().split())
