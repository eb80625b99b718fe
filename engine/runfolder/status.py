"""status.json: the run's current state in one small file, rewritten whole (readers never see half).

The keys DESIGN.md promises (`state`, `pid`, `step`, `lr`, `loss`, `updated`) and the ones the job adds
are the `Status` dataclass, checked on write and on read (engine/runfolder/record.py). A reader asks
`read`, which also says what the file cannot: the process behind a live state is gone (`crashed`), or it
lives but makes no progress (`stalled`: stopped by a signal, or no heartbeat for STALL_S seconds), or the
file is not a status at all (`damaged`: not UTF-8, not a JSON object, a folder or a FIFO in its place,
wrong types), each with a message saying what that means. A reader never raises on a run's status, so
one bad run folder never breaks the list of the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.processes import pid_alive
from engine.runfolder import files, record
from engine.runfolder.record import Invalid

STATUS = "status.json"
# `crashed`, `stalled` and `damaged` are said by the reader, never written by a job
STATES = ("starting", "running", "paused", "stopping", "done", "failed", "stopped", "crashed", "stalled", "damaged")
LIVE_STATES = ("starting", "running", "paused", "stopping", "stalled")
STALL_S = 120.0  # no heartbeat for this long while running or paused: stalled (the job beats every 1-2 s between steps; see no_progress)
MAX_BYTES = 1 << 20  # a status is a few hundred bytes


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
    beat_s: float | None = None  # the longest gap between two status writes so far (a slow step or save)
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
    """The last status the job wrote (None if none yet). A live state whose process is gone reads as
    `crashed`, with `stale(run, status)` as its message when given; one whose process lives but makes no
    progress as `stalled`; a file that is not a status as `damaged`, with the reason."""
    path = Path(run) / STATUS
    try:
        if not stat.S_ISREG(mode := os.lstat(path).st_mode):
            return _damaged(path, f"is a {files.kind(mode)}, not a file")
        fd = files.open_regular(path)
        if fd is None:
            return None
        try:
            data = os.pread(fd, MAX_BYTES + 1, 0)
        finally:
            os.close(fd)
        if len(data) > MAX_BYTES:
            raise Invalid(f"over {MAX_BYTES} bytes")
        status = from_dict(json.loads(data.decode("utf-8")))
    except UnicodeDecodeError:
        return _damaged(path, "is not UTF-8 text")
    except FileNotFoundError:
        return None
    except (UserError, ValueError) as e:  # not JSON, not an object, wrong types (Invalid)
        return _damaged(path, str(e))
    except OSError as e:
        return _damaged(path, f"cannot be read ({e.strerror})")
    if status.live and not pid_alive(status.pid, status.pid_start):
        message = stale(Path(run), status) if stale else "stopped unexpectedly (its process is gone)"
        return replace(status, state="crashed", message=message)  # RELIABILITY P7, O5
    if (why := no_progress(status)) is not None:
        return replace(status, state="stalled", message=why)
    return status


def _damaged(path: Path, reason: str) -> Status:
    return Status(state="damaged", message=f"{path.name} {reason}; the run's state is unknown (`llm-wizard "
                  f"train --resume {path.parent.name}` continues it from its newest checkpoint)")


def stall_after() -> float:
    try:
        return float(os.environ.get("LLM_WIZARD_STALL_S", STALL_S))
    except ValueError:
        return STALL_S


def no_progress(status: Status, now: float | None = None) -> str | None:
    """Why a running or paused job whose process lives makes no progress (None: it does): its process is
    stopped by a signal, or it has not beaten (rewritten status.json) for `stall_after()` seconds, or 3x the
    longest gap between its beats so far where that is longer."""
    if status.state not in ("running", "paused") or status.pid is None:
        return None
    if stopped(status.pid):
        return (f"no progress: its process {status.pid} is stopped by a signal (SIGSTOP or Ctrl-Z); "
                f"`kill -CONT {status.pid}` lets it go on")
    age = (now or time.time()) - (status.updated or 0.0)
    # A job whose steps or saves take minutes beats that seldom: silence counts only past 3x its longest gap.
    if status.updated is not None and age > max(stall_after(), 3 * (status.beat_s or 0.0)):
        return (f"no progress for {age:.0f} s: status.json's heartbeat stopped at step {status.step or 0} "
                "(a hung step, storage or device?); see job.log, or stop it")
    return None


def stopped(pid: int) -> bool:
    """The process is stopped (state T in /proc: SIGSTOP, SIGTSTP) or stopped by a tracer (t); False where
    /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read(4096)
    except OSError:
        return False
    after = text.rfind(b")")  # the command name may hold spaces and parentheses
    return after >= 0 and text[after + 2:after + 3] in (b"T", b"t")
