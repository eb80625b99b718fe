"""The run folder: the only channel between a run and everything that watches or steers it.

Writers (the job): `EventLog` appends events.jsonl in batches, `write_status` rewrites status.json
atomically, `CommandReader` picks up new lines of commands.jsonl with one stat() when nothing changed.
Readers (CLI, TUI, scripts): `read_status`, `read_events`/`follow_events`, `send_command` +
`wait_ack`, `list_runs`, `resolve_run`. No pipes and no sockets: the job never blocks on a reader, and
a reader can die and come back at any time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError

EVENT_VERSION = 1
EVENT_TYPES = ("metrics", "eval", "checkpoint", "state", "alert", "control_ack", "error", "done")
STATES = ("starting", "running", "paused", "stopping", "done", "failed", "stopped", "crashed")
LIVE_STATES = ("starting", "running", "paused", "stopping")
COMMANDS = ("pause", "resume", "save", "stop", "set_lr", "rollback", "rescue")
CMD_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

SPEC, EVENTS, COMMANDS_FILE, STATUS, LOG = "spec.toml", "events.jsonl", "commands.jsonl", "status.json", "job.log"


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


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_status(run: Path, status: dict[str, Any]) -> None:
    """status.json: state, pid, step, lr, loss, updated (+ anything else); readers never see half a file."""
    status = {**status, "updated": time.time()}
    write_text_atomic(Path(run) / STATUS, json.dumps(status))


def read_status(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The last status the job wrote ({} if none yet); `state` is corrected to `crashed` if the job is gone."""
    try:
        status = json.loads((Path(run) / STATUS).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if status.get("state") in LIVE_STATES and not pid_alive(status.get("pid"), status.get("pid_start")):
        from engine.runfolder.lock import stale_message

        status["state"] = "crashed"
        status["message"] = stale_message(Path(run), status)  # RELIABILITY P7, O5
    return status


# ---- events -------------------------------------------------------------------------------------

class EventLog:
    """Append-only events.jsonl; `emit` buffers, `flush` writes the batch with one write() call."""

    def __init__(self, run: Path, echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._fd = os.open(Path(run) / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._buf: list[str] = []
        self._echo = echo

    def emit(self, type: str, flush: bool = True, **fields: Any) -> dict[str, Any]:
        assert type in EVENT_TYPES, type
        event = {"v": EVENT_VERSION, "t": round(time.time(), 3), "type": type, **fields}
        self._buf.append(json.dumps(event, default=_jsonable) + "\n")
        if self._echo:
            self._echo(event)
        if flush:
            self.flush()
        return event

    def flush(self) -> None:
        if self._buf:
            data = "".join(self._buf).encode()
            self._buf.clear()
            while data:
                data = data[os.write(self._fd, data):]

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_events_with_offsets(run: str | os.PathLike[str], from_offset: int = 0) -> list[tuple[dict[str, Any], int]]:
    """Complete event lines from byte `from_offset` on, each with the offset just after it."""
    try:
        with open(Path(run) / EVENTS, "rb") as f:
            f.seek(from_offset)
            data = f.read()
    except FileNotFoundError:
        return []
    out, pos = [], 0
    while (nl := data.find(b"\n", pos)) >= 0:  # a line still being written is read next time
        line, pos = data[pos:nl], nl + 1
        try:
            out.append((json.loads(line), from_offset + pos))
        except json.JSONDecodeError:
            continue
    return out


def read_events(run: str | os.PathLike[str], from_offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete event lines from byte `from_offset` on, and the offset to continue from."""
    try:
        with open(Path(run) / EVENTS, "rb") as f:
            f.seek(from_offset)
            data = f.read()
    except FileNotFoundError:
        return [], from_offset
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, from_offset + end


def follow_events(run: str | os.PathLike[str], from_offset: int = 0, *, poll_s: float = 0.2,
                  until_exit: bool = True, stop: Callable[[], bool] | None = None
                  ) -> Iterator[tuple[dict[str, Any], int]]:
    """Yield (event, offset after it) as the job writes them; ends after `done`, or when the job is gone
    (`until_exit`), or when `stop()` says so. Restart from the last offset to miss nothing."""
    offset = from_offset
    while True:
        batch = read_events_with_offsets(run, offset)
        for event, offset in batch:
            yield event, offset
            if until_exit and event.get("type") == "done":
                return
        if stop and stop():
            return
        if until_exit and not batch and read_status(run).get("state") not in LIVE_STATES:
            for event, offset in read_events_with_offsets(run, offset):  # written just before it went
                yield event, offset
            return
        time.sleep(poll_s)


# ---- commands -----------------------------------------------------------------------------------

def send_command(run: str | os.PathLike[str], cmd: str, *, cid: str | None = None, **args: Any) -> str:
    """Append one command; returns its id, which the job's `control_ack` event carries. Pass the id of an
    earlier send as `cid` to retry it: the job runs each id once and answers a repeat with the first outcome
    (`duplicate: true`), so a retry after a timeout never pauses, saves or rolls back twice."""
    if cmd not in COMMANDS:
        raise UserError(f"unknown command {cmd!r}: choose one of {', '.join(COMMANDS)}", field="cmd")
    if cid is None:
        cid = secrets.token_hex(6)
    elif not (isinstance(cid, str) and CMD_ID.fullmatch(cid)):
        raise UserError(f"command id {cid!r}: 1 to 64 letters, digits, '.', '_' or '-'", field="id")
    line = json.dumps({"id": cid, "cmd": cmd, "t": round(time.time(), 3), **args}) + "\n"
    fd = os.open(Path(run) / COMMANDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: never interleaves with another sender
    finally:
        os.close(fd)
    return cid


def wait_ack(run: str | os.PathLike[str], cid: str, timeout: float = 30.0, *, from_offset: int = 0,
             poll_s: float = 0.05) -> dict[str, Any] | None:
    """The `control_ack` event for command `cid`, or None on timeout or when the job has exited."""
    deadline = time.monotonic() + timeout
    offset, last_check = from_offset, 0.0
    while True:
        events, offset = read_events(run, offset)
        for event in events:
            if event.get("type") == "control_ack" and event.get("id") == cid:
                return event
        now = time.monotonic()
        if now > deadline:
            return None
        if now - last_check > 1.0:
            last_check = now
            if read_status(run).get("state") not in LIVE_STATES:
                events, offset = read_events(run, offset)
                return next((e for e in events if e.get("type") == "control_ack" and e.get("id") == cid), None)
        time.sleep(poll_s)


class CommandReader:
    """The job's side of commands.jsonl: new commands since the last poll, one stat() when none.

    RELIABILITY S8: there is no socket whose peer uid could be checked (SO_PEERCRED); the equivalent is
    that commands count only from a run folder and a commands file that this process's uid owns and that
    no group or other user can write. New bytes that fail the check are skipped, never run, and `alert`
    is told once per problem."""

    def __init__(self, run: Path, from_offset: int | None = None,
                 alert: Callable[[str], None] | None = None) -> None:
        self.path = Path(run) / COMMANDS_FILE
        # By default skip commands sent before this process started (a resumed run ignores old ones).
        self.offset = from_offset if from_offset is not None else self._size()
        self._sig = (-1, -1)
        self.alert = alert
        self.refused: str | None = None  # the last problem alerted

    def _size(self) -> int:
        try:
            return _stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def _foreign(self, st: os.stat_result) -> str | None:
        """Why commands in this file must not be trusted (None: they may be)."""
        uid = os.geteuid()
        for what, s in ((f"the run folder {self.path.parent}", _stat(self.path.parent)), (f"{self.path}", st)):
            if s.st_uid != uid:
                return f"{what} belongs to uid {s.st_uid}, not to this run's uid {uid}"
            if s.st_mode & 0o022:
                return f"{what} is writable by other users (mode {s.st_mode & 0o777:o})"
        return None

    def poll(self) -> list[dict[str, Any]]:
        try:
            st = _stat(self.path)
        except FileNotFoundError:
            return []
        sig = (st.st_size, st.st_mtime_ns)
        if sig == self._sig or st.st_size <= self.offset:
            self._sig = sig
            return []
        problem = self._foreign(st)
        if problem:
            self.offset, self._sig = st.st_size, sig  # these bytes are skipped for good, not run later
            if problem != self.refused and self.alert:
                self.alert(f"commands ignored: {problem}; only this user's own commands steer the run "
                           "(chmod go-w, and send them as the user who started it)")
            self.refused = problem
            return []
        self.refused = None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        self._sig = sig if end == len(data) else (-1, -1)
        out = []
        for line in data[:end].splitlines():
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError
            except ValueError:
                cmd = {"id": None, "cmd": "?", "invalid": line.decode(errors="replace")[:200]}
            out.append(cmd)
        return out


def _stat(path: Path) -> os.stat_result:
    return os.stat(path)  # one place, so that a test can fake another owner (RELIABILITY S8)


# ---- processes and listing ----------------------------------------------------------------------

def pid_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), to tell a live job from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = stat[stat.rfind(")") + 2:].split()
    return None if fields_[0] == "Z" else fields_[19]


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    if not pid:
        return False
    if Path("/proc").is_dir():
        now = pid_start_time(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_info(run: Path) -> RunInfo:
    status = read_status(run)
    technique = status.get("technique")
    if not technique:
        import tomllib

        try:
            technique = tomllib.loads((run / SPEC).read_text(encoding="utf-8")).get("technique", "?")
        except (OSError, ValueError):
            technique = "?"
    return RunInfo(id=run.name, path=str(run), state=status.get("state", "starting"), technique=technique,
                   step=int(status.get("step", 0)), loss=status.get("loss"), pid=status.get("pid"),
                   started=status.get("started"))


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run folder (one holding spec.toml), oldest first."""
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and (p / SPEC).is_file()]
    return [run_info(p) for p in sorted(runs, key=lambda p: p.name)]


def resolve_run(ref: str, runs_dir: Path) -> Path:
    """A run by folder path, id, or unique id prefix/suffix; `latest` is the newest run."""
    p = Path(ref).expanduser()
    if (p / SPEC).is_file():
        return p.resolve()
    runs = [Path(r.path) for r in list_runs(runs_dir)]
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
