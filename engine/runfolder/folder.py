"""The run folder: the only channel between a run and everything that watches or steers it.

One module per file of the folder, each a typed contract checked on write and on read:
engine/runfolder/events.py (events.jsonl), commands.py (commands.jsonl), status.py (status.json); this
module holds the folder itself: creating one with its spec.toml, listing runs, resolving a run by
name, and the JSON views of the three files for scripts, the CLI's --json output and tests (dicts
with the keys on disk, built from the typed records, so they hold only what the reader accepted).
No pipes and no sockets: the job never blocks on a reader, and a reader can die and come back at
any time.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from engine.checkpoints import guards
from engine.errors import UserError
from engine.runfolder import commands as commands_file
from engine.runfolder import events as events_file
from engine.runfolder import status as status_file
from engine.runfolder.commands import CMD_ID, COMMANDS_FILE, CommandReader
from engine.runfolder.events import EVENTS, EventLog
from engine.runfolder.lock import stale_message
from engine.runfolder.record import Invalid
from engine.runfolder.status import LIVE_STATES, STATES, STATUS, write_text_atomic

EVENT_VERSION = events_file.VERSION
EVENT_TYPES = events_file.TYPES
COMMANDS = commands_file.NAMES
SPEC, LOG = "spec.toml", "job.log"
STALE_S = 5.0  # a live job rewrites status.json every 1-2 s between steps; quieter, a reader asks the disk why
__all__ = ["CMD_ID", "COMMANDS_FILE", "CommandReader", "EVENTS", "EventLog", "LIVE_STATES", "STATES", "STATUS",
           "write_text_atomic"]


def new_run_id(name: str = "run") -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


def create_run(runs_dir: Path, name: str, spec_toml: str, *, run_id: str | None = None) -> Path:
    """A new, empty run folder holding spec.toml; never reuses an existing folder. `run_id`: the folder's
    name, picked beforehand (the wizard shows several machines' commands before launch), never retried."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            path = runs_dir / (run_id or new_run_id(name))
            try:
                path.mkdir(mode=0o700)  # RELIABILITY S7: a run's data, spec and logs are its owner's alone
            except FileExistsError:
                if run_id:
                    raise UserError(f"run folder {path} already exists", field="run") from None
                continue
            write_text_atomic(path / SPEC, spec_toml)  # RELIABILITY C6: a write test before anything heavy
            return path
    except OSError as e:  # read-only, permission denied, full: said before any training starts
        raise UserError(f"cannot write to the runs folder {runs_dir}: {e.strerror or e}; choose another with "
                        "--runs-dir or LLM_WIZARD_RUNS", field="runs_dir") from None
    raise UserError(f"could not create a new run folder in {runs_dir}")


# ---- JSON views of the typed files ----------------------------------------------------------------

def write_status(run: Path, status: dict[str, Any]) -> None:
    """status.json from its keys (state, pid, step, lr, loss, ...; `updated` is stamped): checked as a
    `Status`, so a key the reader does not know, or a value of the wrong type, is refused here."""
    try:
        typed = status_file.Status(**{k: v for k, v in status.items() if k != "updated"})
    except (TypeError, Invalid) as e:
        raise ValueError(f"status.json: {e}") from None
    status_file.write(run, typed)


def current_status(run: str | os.PathLike[str]) -> status_file.Status | None:
    """The last status the job wrote (None if none yet); `state` is `crashed`, with what that means, if
    the job is gone."""
    status = status_file.read(run, stale=stale_message)
    if status is None or status.state not in (*LIVE_STATES, "crashed"):
        return status
    return _storage_view(Path(run), status)


def _storage_view(run: Path, status: status_file.Status) -> status_file.Status:
    """RELIABILITY C13: a job whose folder stopped taking writes cannot say so in status.json; read it off the
    file system. Alive, it is paused and retrying; gone, it stopped there (not killed by the OOM killer)."""
    quiet = status.state == "crashed" or time.time() - (status.updated or 0) > STALE_S  # the job writes no more
    why = guards.folder_problem(run, probe=quiet)
    if why is None:
        return status
    if status.state == "crashed":
        return replace(status, state="stopped", message=f"stopped: {why}; the job could not write its state "
                       f"there and ended; {resumable(run)}")
    if status.state == "paused" and any(w in (status.message or "") for w in ("disk full", "not writable", "storage")):
        return status
    return replace(status, state="paused", message=f"paused: {why}; the job holds its state in memory and "
                   "goes on by itself once the folder takes writes again")


def resumable(run: Path) -> str:
    from engine.checkpoints import store as checkpoint

    history = [c for c in checkpoint.lineage(run) if checkpoint.verify(c.path, full=False) is None]
    return (f"resume from step {history[0].step} with `llm-wizard train --resume {run.name}` once it is writable"
            if history else "no checkpoint yet: start it again once it is writable")


def read_status(run: str | os.PathLike[str]) -> dict[str, Any]:
    """current_status as its JSON object ({} if none yet)."""
    status = current_status(run)
    return status.to_dict() if status is not None else {}


def live(run: str | os.PathLike[str]) -> Callable[[], bool]:
    """Whether the run's job still runs, asked afresh each call (for follow and wait_ack)."""
    return lambda: read_status(run).get("state") in LIVE_STATES


def read_events_with_offsets(run: str | os.PathLike[str], from_offset: int = 0) -> list[tuple[dict[str, Any], int]]:
    """Complete event lines from byte `from_offset` on, each with the offset just after it."""
    return [(e.to_dict(), end) for e, end in events_file.read(run, from_offset).events]


def read_events(run: str | os.PathLike[str], from_offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete event lines from byte `from_offset` on, and the offset to continue from."""
    batch = events_file.read(run, from_offset)
    return [e.to_dict() for e in batch], batch.offset


def follow_events(run: str | os.PathLike[str], from_offset: int = 0, *, poll_s: float = 0.2,
                  until_exit: bool = True, stop: Callable[[], bool] | None = None
                  ) -> Iterator[tuple[dict[str, Any], int]]:
    """events.follow as JSON objects: ends after `done`, when the job is gone, or when `stop()` says so."""
    for event, offset in events_file.follow(run, from_offset, poll_s=poll_s, until_exit=until_exit, stop=stop,
                                            live=live(run)):
        yield event.to_dict(), offset


def send_command(run: str | os.PathLike[str], cmd: str, *, cid: str | None = None, **args: Any) -> str:
    """Append one command (checked: UserError if it is not one); returns its id, which the job's
    `control_ack` event carries. Pass the id of an earlier send as `cid` to retry it (commands.send)."""
    return commands_file.send(run, commands_file.build(cmd, cid=cid, **args))


def wait_ack(run: str | os.PathLike[str], cid: str, timeout: float = 30.0, *, from_offset: int = 0,
             poll_s: float = 0.05) -> dict[str, Any] | None:
    """The `control_ack` event for command `cid`, or None on timeout or when the job has exited."""
    ack = events_file.wait_ack(run, cid, timeout, from_offset=from_offset, poll_s=poll_s, live=live(run))
    return ack.to_dict() if ack is not None else None


# ---- listing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    id: str
    path: str
    state: str
    technique: str
    step: int
    loss: float | None
    pid: int | None
    started: float | None
    download: dict[str, Any] | None = None  # a Hub download before the first step: status.json's `download`
    message: str | None = None  # what a reader-said state means: crashed, stalled, damaged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_info(run: Path) -> RunInfo:
    """One run's line of the list; never raises on what is in its folder (a damaged status reads as
    `damaged` with the reason, a spec that cannot be read as technique `?`)."""
    status = current_status(run) or status_file.Status(state="starting")  # no status yet: just created
    technique = status.technique
    if not technique:
        import tomllib

        try:
            technique = str(tomllib.loads((run / SPEC).read_text(encoding="utf-8")).get("technique", "?"))
        except (OSError, ValueError):
            technique = "?"
    said = status.state in ("crashed", "stalled", "damaged")
    return RunInfo(id=run.name, path=str(run), state=status.state, technique=technique, step=status.step or 0,
                   loss=status.loss, pid=status.pid, started=status.started,
                   download=status.download if status.live else None, message=status.message if said else None)


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run folder (one holding spec.toml), oldest first."""
    return [run_info(p) for p in run_paths(runs_dir)]


def run_paths(runs_dir: Path) -> list[Path]:
    """Every run folder, oldest first, without reading their files (resolving a name needs no more)."""
    try:
        return sorted((p for p in runs_dir.iterdir() if p.is_dir() and (p / SPEC).is_file()), key=lambda p: p.name)
    except OSError:
        return []


def resolve_run(ref: str, runs_dir: Path) -> Path:
    """A run by folder path, id, or unique id prefix/suffix; `latest` is the newest run."""
    p = Path(ref).expanduser()
    if (p / SPEC).is_file():
        return p.resolve()
    runs = run_paths(runs_dir)
    if ref in ("latest", "last") and runs:
        return runs[-1]
    exact = [r for r in runs if r.name == ref]
    if exact:
        return exact[0]
    matches = [r for r in runs if r.name.startswith(ref) or r.name.endswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"run {ref!r} is ambiguous: {', '.join(m.name for m in matches[:5])}", field="run")
    raise UserError(f"no run {ref!r} in {runs_dir} (see `llm-wizard runs`)", field="run")
