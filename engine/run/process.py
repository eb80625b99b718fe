"""What a training process does the same way whether it is the only one (engine/run/job.py) or one rank of
several (engine/run/distributed/worker.py): events echoed in the foreground, late signals ignored."""

from __future__ import annotations

import json
import signal
from typing import Any


def echo(event: dict[str, Any]) -> None:
    """Foreground mode: one plain line per event (the CLI's `attach` is the pretty view)."""
    keys = {k: v for k, v in event.items() if k not in ("v", "t", "type")}
    try:
        print(f"[{event['type']}] " + json.dumps(keys, default=str), flush=True)
    except OSError:
        pass  # the terminal went away: keep training


def ignore_late_signals() -> None:
    """After the job has saved and ended: a signal arriving now (a second Ctrl-C while Python shuts down,
    where it resets our handlers to the default) must not turn the job's exit code into "killed"."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
