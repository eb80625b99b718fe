"""commands.jsonl: what the TUI, the CLI and scripts ask a running job to do, one typed command a line.

Every line is `{"id": .., "cmd": <name>, "t": <unix time>, <arguments>}`: the frozen dataclasses below,
one per command (DESIGN.md's contract). `send` appends one; the job's `CommandReader` picks up new
lines with one stat() when nothing changed and checks each the same way (engine/runfolder/record.py).
A line that is not a command of this version reaches the job as `{"id", "cmd": "?", "invalid"}`, so
that it is answered (refused) instead of being run half-understood. Arguments are checked for their
type here; whether a value makes sense now (a positive factor, a checkpoint that exists) is for the
job to answer in its `control_ack`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engine.errors import UserError
from engine.runfolder import record
from engine.runfolder.record import Invalid

COMMANDS_FILE = "commands.jsonl"
CMD_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
INVALID = "?"  # the `cmd` of a line that is not a command


def _now() -> float:
    return round(time.time(), 3)


def _new_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True, kw_only=True)
class Command:
    """The keys every command has; `NAME` is the line's `cmd`."""
    NAME: ClassVar[str] = ""
    id: str = field(default_factory=_new_id)  # the job's control_ack carries it; a retry sends it again
    t: float = field(default_factory=_now)

    def __post_init__(self) -> None:
        record.validate(self)
        if not CMD_ID.fullmatch(self.id):
            raise Invalid(f"command id {self.id!r}: 1 to 64 letters, digits, '.', '_' or '-'")

    def to_dict(self) -> dict[str, Any]:
        body = record.encode(self)
        return {"id": body.pop("id"), "cmd": self.NAME, "t": body.pop("t"), **body}


@dataclass(frozen=True, kw_only=True)
class Pause(Command):
    NAME: ClassVar[str] = "pause"


@dataclass(frozen=True, kw_only=True)
class Resume(Command):
    NAME: ClassVar[str] = "resume"


@dataclass(frozen=True, kw_only=True)
class Save(Command):
    NAME: ClassVar[str] = "save"


@dataclass(frozen=True, kw_only=True)
class Stop(Command):
    NAME: ClassVar[str] = "stop"
    signal: str | None = None  # the launcher passing on a signal it received (SIGTERM, SIGINT)


@dataclass(frozen=True, kw_only=True)
class SetLr(Command):
    """Multiply the learning rate by `factor`, or set it to `value` (exactly one)."""
    NAME: ClassVar[str] = "set_lr"
    factor: float | None = None
    value: float | None = None


@dataclass(frozen=True, kw_only=True)
class Rollback(Command):
    """Back to the checkpoint of `step` (on the active branch) or named `checkpoint`, optionally with the
    learning rate times `lr_factor`."""
    NAME: ClassVar[str] = "rollback"
    step: int | None = None
    checkpoint: str | None = None
    lr_factor: float | None = None


@dataclass(frozen=True, kw_only=True)
class Rescue(Command):
    """The book's local-minimum recipe: about `back` steps back, the rate times `factor` for `steps`."""
    NAME: ClassVar[str] = "rescue"
    factor: float | None = None
    steps: int | None = None
    back: int | None = None


KINDS: dict[str, type[Command]] = {c.NAME: c for c in (Pause, Resume, Save, Stop, SetLr, Rollback, Rescue)}
NAMES = tuple(KINDS)


def build(name: str, *, cid: str | None = None, **args: Any) -> Command:
    """The command `name` with its arguments; UserError saying what is wrong (for the CLI and the TUI)."""
    cls = KINDS.get(name)
    if cls is None:
        raise UserError(f"unknown command {name!r}: choose one of {', '.join(NAMES)}", field="cmd")
    if cid is not None and not (isinstance(cid, str) and CMD_ID.fullmatch(cid)):
        raise UserError(f"command id {cid!r}: 1 to 64 letters, digits, '.', '_' or '-'", field="id")
    try:
        command = record.decode(cls, {**args, **({"id": cid} if cid is not None else {})})
    except Invalid as e:
        raise UserError(f"{name}: {e}", field="cmd") from None
    return command


def from_dict(data: Any) -> Command:
    """The typed command of one JSON object; Invalid saying why it is not one."""
    if not isinstance(data, dict):
        raise Invalid(f"not a JSON object but {type(data).__name__}")
    cls = KINDS.get(data.get("cmd"))  # type: ignore[arg-type]
    if cls is None:
        raise Invalid(f"unknown command {data.get('cmd')!r}")
    if "id" not in data:
        raise Invalid("no id")
    return record.decode(cls, data, skip=("cmd",))


def parse(line: bytes | str) -> Command:
    return from_dict(record.load_json(line))


def send(run: str | os.PathLike[str], command: Command) -> str:
    """Append one command; returns its id, which the job's `control_ack` event carries. Send a command
    again with the id of an earlier one to retry it: the job runs each id once and answers a repeat with the
    first outcome (`duplicate: true`), so a retry after a timeout never pauses, saves or rolls back twice."""
    line = json.dumps(command.to_dict()) + "\n"
    fd = os.open(Path(run) / COMMANDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: never interleaves with another sender
    finally:
        os.close(fd)
    return command.id


def invalid(data: Any, reason: str, text: str) -> dict[str, Any]:
    """What the job is handed for a line that is not a command: answered by id when it has a usable one."""
    cid = data.get("id") if isinstance(data, dict) else None
    return {"id": cid if isinstance(cid, str) and CMD_ID.fullmatch(cid) else None, "cmd": INVALID,
            "invalid": f"{text[:200]} ({reason})"}


class CommandReader:
    """The job's side of commands.jsonl: new commands since the last poll, one stat() when none.

    `poll` hands each command over as its JSON object (`Command.to_dict()`, checked), or the `invalid`
    stand-in for a line that is not one.

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
            if not line.strip():
                continue
            text = line.decode(errors="replace")
            try:
                raw = json.loads(line)
            except ValueError:
                out.append(invalid(None, "not JSON", text))
                continue
            try:
                out.append(from_dict(raw).to_dict())
            except Invalid as e:
                out.append(invalid(raw, str(e), text))
        return out


def _stat(path: Path) -> os.stat_result:
    return os.stat(path)  # one place, so that a test can fake another owner (RELIABILITY S8)
