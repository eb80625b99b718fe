"""Trackers and notifications: consumers of a run's events, never on the training loop's path.

`attach(events, run, spec)` hangs a `Hub` (hub.py: a bounded queue and a thread of its own) on the job's event
log; the hub feeds TensorBoard (<run>/tb/, on by default) and the trackers `log.trackers` names (trackers.py),
and the notifications of `notify.urls` (notify.py). A consumer that fails is switched off with one alert; the
run goes on. compare.py reads finished or live run folders side by side (`llm-wizard runs compare`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.spec import RunSpec
from engine.track.hub import Hub


def attach(events: Any, run: Path, spec: RunSpec) -> Hub | None:
    """Start the hub for `run` on `events` (an EventLog); None when nothing is asked for."""
    from engine.track import notify, trackers

    sinks: list[Any] = list(trackers.sinks(Path(run), spec))
    if spec.notify.urls:
        sinks.append(notify.Notifier(events, Path(run).name, spec.notify.urls, spec.notify.severity))
    if not sinks:
        return None
    hub = Hub(events, sinks)
    events.listen(hub)
    return hub
