"""What a training process does the same way whether it is the only one (engine/run/job.py) or one rank of
several (engine/run/distributed/worker.py): events echoed in the foreground, late signals ignored."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any


def echo(event: dict[str, Any]) -> None:
    """Foreground mode: one plain line per event (the CLI's `attach` is the pretty view)."""
    keys = {k: v for k, v in event.items() if k not in ("v", "t", "type")}
    try:
        if event["type"] == "download":  # a progress bar, redrawn in place on a terminal
            from engine.hub.download import progress_line

            line = progress_line(keys["repo"], keys["done_bytes"], keys["total_bytes"], keys["rate"],
                                 keys.get("eta_s"), keys.get("finished", False), bar=30)
            if sys.stdout.isatty():
                print(f"\r[download] {line}\x1b[K", end="\n" if keys.get("finished") else "", flush=True)
            else:
                print(f"[download] {line}", flush=True)
            return
        print(f"[{event['type']}] " + json.dumps(keys, default=str), flush=True)
    except OSError:
        pass  # the terminal went away: keep training


def ignore_late_signals() -> None:
    """After the job has saved and ended: a signal arriving now (a second Ctrl-C while Python shuts down,
    where it resets our handlers to the default) must not turn the job's exit code into "killed"."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
