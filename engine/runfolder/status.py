"""status.json: the run's current state in one small file, rewritten whole (readers never see half).

The keys DESIGN.md promises (`state`, `pid`, `step`, `lr`, `loss`, `updated`) and the ones the job adds
are the `Status` dataclass, checked on write and on read (engine/runfolder/record.py). A reader asks
`read`, which also says when the process behind a live state is gone: the state becomes `crashed`,
with a message saying what that means.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.processes import pid_alive
from engine.runfolder import record
from engine.runfolder.record import Invalid

STATUS = "status.json"
STATES = ("starting", "running", "paused", "stopping", "done", "failed", "stopped", "crashed")
LIVE_STATES = ("starting", "running", "paused", "stopping")


@dataclass(frozen=True, kw_only=True)
class Status:
    state: str  # one of STATES
    pid: int | None = None  # the process to watch and signal (several processes: the launcher)
    pid_start: str | None = None  # its start time, so that a reused pid is not taken for it
    step: int | None = None
    lr: float | None = None
    loss: float | None = None
    updated: float | None = None  # set by `write`
    technique: str | None = None
    started: float | None = None
    total_steps: int | None = None
    branch: int | None = None
    message: str | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    # several processes
    rank0_pid: int | None = None
    world_size: int | None = None
    commands_read_ms: float | None = None
    commands_sync_ms: float | None = None
    # a Hub download before the first step: the last `download` event's keys (engine/runfolder/events.py)
    download: dict[str, str | float | bool | None] | None = None
    extra: dict[str, Any] = record.extra_field()

    def __post_init__(self) -> None:
        record.validate(self)
        if self.state not in STATES:
            raise Invalid(f"Status.state {self.state!r}: one of {', '.join(STATES)}")

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return record.encode(self)


def from_dict(data: Any) -> Status:
    return record.decode(Status, data)


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace `path` with `text` whole: written beside it under `.<name>.<pid>.tmp`, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        # a full disk: the half-written copy would hold the space the next try needs (RELIABILITY C13)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write(run: str | os.PathLike[str], status: Status) -> Status:
    """Rewrite status.json with `status`, stamped `updated` now; returns what was written."""
    status = replace(status, updated=time.time())
    write_text_atomic(Path(run) / STATUS, json.dumps(status.to_dict()))
    return status


def read(run: str | os.PathLike[str], stale: Callable[[Path, Status], str] | None = None) -> Status | None:
    """The last status the job wrote (None if none yet, or if the file is not a status: a reader never
    fails on it). A live state whose process is gone reads as `crashed`, with `stale(run, status)` as
    its message when given."""
    try:
        status = from_dict(json.loads((Path(run) / STATUS).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError):  # Invalid is a ValueError
        return None
    if status.live and not pid_alive(status.pid, status.pid_start):
        message = stale(Path(run), status) if stale else "stopped unexpectedly (its process is gone)"
        status = replace(status, state="crashed", message=message)  # RELIABILITY P7, O5
    return status
