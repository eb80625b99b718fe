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

import errno
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engine.errors import UserError
from engine.runfolder import files, record
from engine.runfolder.record import Invalid

COMMANDS_FILE = "commands.jsonl"
CMD_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
INVALID = "?"  # the `cmd` of a line that is not a command
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


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
    first outcome (`duplicate: true`), so a retry after a timeout never pauses, saves or rolls back twice.

    The line is written only where the job's reader will take it (a regular file, not a link or a FIFO,
    owned by the run's user and writable by no one else: `CommandReader`'s own checks), whole (one
    O_APPEND write, after a newline if a torn line ends the file) and synced; UserError saying why not."""
    path = Path(run) / COMMANDS_FILE
    line = (json.dumps(command.to_dict()) + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            raise UserError(f"not sent: {files.not_regular(path, stat.S_IFLNK)}", field="run") from None
        if e.errno == errno.ENXIO:  # a FIFO nobody reads
            raise UserError(f"not sent: {files.not_regular(path, stat.S_IFIFO)}", field="run") from None
        raise UserError(f"not sent: cannot write {path}: {e.strerror}", field="run") from None
    try:
        st = os.fstat(fd)
        problem = (files.not_regular(path, st.st_mode) if not stat.S_ISREG(st.st_mode)
                   else trust_problem(path, os.stat(path.parent), _stat(path), os.geteuid(), "you, uid"))
        if problem:
            raise UserError(f"not sent: {problem}", field="run")
        if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
            line = b"\n" + line  # a torn line (a killed writer, garbage) must not swallow this one
        if os.write(fd, line) != len(line):  # one small O_APPEND write: never interleaves with another sender
            raise UserError(f"not sent: {path} took part of the command (disk full?); send it again", field="run")
        os.fsync(fd)
    except OSError as e:
        raise UserError(f"not sent: cannot write {path}: {e.strerror}", field="run") from None
    finally:
        os.close(fd)
    return command.id


def trust_problem(path: Path, folder: os.stat_result, st: os.stat_result, uid: int, me: str = "this run's uid"
                  ) -> str | None:
    """Why commands in this file must not be trusted by a job of `uid` (None: they may be). RELIABILITY S8."""
    for what, s in ((f"the run folder {path.parent}", folder), (f"{path}", st)):
        if s.st_uid != uid:
            return (f"{what} belongs to uid {s.st_uid}, not to {me} {uid}; only the run's own user's "
                    "commands steer it (send them as that user)")
        if s.st_mode & 0o022:
            return f"{what} is writable by other users (mode {s.st_mode & 0o777:o}): chmod go-w it"
    return None


def invalid(data: Any, reason: str, text: str) -> dict[str, Any]:
    """What the job is handed for a line that is not a command: answered by id when it has a usable one."""
    cid = data.get("id") if isinstance(data, dict) else None
    return {"id": cid if isinstance(cid, str) and CMD_ID.fullmatch(cid) else None, "cmd": INVALID,
            "invalid": f"{text[:200]} ({reason})"}


class CommandReader:
    """The job's side of commands.jsonl: new commands since the last poll, one lstat() when none.

    `poll` hands each command over as its JSON object (`Command.to_dict()`, checked), or the `invalid`
    stand-in for a line that is not one. What a careless or hostile hand does to the file is noticed,
    alerted once per problem (`alert`) and never stalls a step:
    - replaced (removed and made anew, renamed over): the new file is read from its start;
    - truncated (smaller than what was read): read again from its start (ids already answered are not
      run twice: engine/run/controls.py);
    - a line over MAX_LINE bytes (a huge unterminated line): skipped up to its newline, never held whole;
      at most READ_CHUNK bytes are read a poll, so a flood costs each step little;
    - a symbolic link, a FIFO, a folder: nothing read (never opened blocking) until it is a file again.

    RELIABILITY S8: there is no socket whose peer uid could be checked (SO_PEERCRED); the equivalent is
    that commands count only from a run folder and a commands file that this process's uid owns and that
    no group or other user can write. New bytes that fail the check are skipped, never run."""

    MAX_LINE = 64 << 10  # a command is a few hundred bytes
    READ_CHUNK = 256 << 10

    def __init__(self, run: Path, from_offset: int | None = None,
                 alert: Callable[[str], None] | None = None) -> None:
        self.path = Path(run) / COMMANDS_FILE
        st = self._lstat()
        regular = st is not None and stat.S_ISREG(st.st_mode)
        # By default skip commands sent before this process started (a resumed run ignores old ones).
        self.offset = from_offset if from_offset is not None else (st.st_size if regular else 0)  # type: ignore[union-attr]
        self.pos = self.offset  # read up to here: `offset` plus a line still being written, or skipped
        self._ident = (st.st_dev, st.st_ino) if regular else None  # type: ignore[union-attr]
        self._tail = b""  # the last bytes read: a file cut and grown again past `pos` no longer holds them
        # The file read is held open: its inode cannot be reused by a new file while we hold it, so a file
        # removed and made anew is always told from the same file grown (inode numbers are recycled).
        self._fd: int | None = self._open(self._ident) if regular else None
        if self._fd is not None:
            self._tail = os.pread(self._fd, min(32, self.pos), max(0, self.pos - 32))
        self._sig: tuple[int, ...] | None = None
        self._buf = b""  # the start of a line still being written
        self._skipping = False  # inside an over-long line: dropped up to its newline
        self.alert = alert
        self.refused: str | None = None  # the last problem alerted

    def _lstat(self) -> os.stat_result | None:
        try:
            return _stat(self.path)
        except FileNotFoundError:
            return None

    def _say(self, problem: str | None) -> None:
        if problem and problem != self.refused and self.alert:
            self.alert(problem)
        self.refused = problem

    def _restart(self, why: str) -> None:
        self._say(why)
        self.offset = self.pos = 0
        self._buf, self._skipping, self._tail = b"", False, b""

    def poll(self) -> list[dict[str, Any]]:
        st = self._lstat()
        if st is None:
            return []
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
        if sig == self._sig:
            return []
        self._sig = sig
        if not stat.S_ISREG(st.st_mode):
            self._say(f"commands ignored: {files.not_regular(self.path, st.st_mode)}")
            return []
        ident = (st.st_dev, st.st_ino)
        if self._fd is None or ident != self._ident:
            if self._fd is not None:
                os.close(self._fd)
            if self._ident is not None and ident != self._ident:
                self._restart(f"{self.path} was replaced by another file: reading the new one from its start")
            self._ident, self._fd = ident, self._open(ident)
            if self._fd is None:
                self._sig = None  # changed under us: looked at again next poll
                return []
        elif st.st_size < self.pos or os.pread(self._fd, len(self._tail), self.pos - len(self._tail)) != self._tail:
            self._restart(f"{self.path} was truncated or rewritten (the {self.pos} bytes read are no longer "
                          "there): reading it again from its start")
        if st.st_size <= self.pos:
            return []
        problem = trust_problem(self.path, os.stat(self.path.parent), st, os.geteuid())
        if problem:
            self.offset = self.pos = st.st_size  # these bytes are skipped for good, not run later
            self._buf, self._skipping = b"", False
            self._tail = os.pread(self._fd, min(32, self.pos), self.pos - min(32, self.pos))
            self._say(f"commands ignored: {problem}")
            return []
        data = self._read(ident, st.st_size)
        return [] if data is None else self._lines(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except (AttributeError, OSError):
            pass

    def _open(self, ident: tuple[int, int] | None) -> int | None:
        """A descriptor of the commands file if it is still the regular file `ident` (never blocks)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
        except OSError:
            return None
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != ident:
            os.close(fd)
            return None
        return fd

    def _read(self, ident: tuple[int, int], size: int) -> bytes | None:
        assert self._fd is not None
        data = _pread(self._fd, min(self.READ_CHUNK, size - self.pos), self.pos)
        self.pos += len(data)
        self._tail = (self._tail + data)[-32:]
        if self.pos < size:
            self._sig = None  # more than one chunk waits: the rest next poll
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self.offset = self.pos
                return b""
            data, self._skipping = data[nl + 1:], False
        self.refused = None
        return data

    def _lines(self, data: bytes) -> list[dict[str, Any]]:
        *lines, self._buf = (self._buf + data).split(b"\n")
        if len(self._buf) > self.MAX_LINE:
            lines.append(self._buf)  # over-long and unterminated: refused now, the rest skipped when it comes
            self._buf, self._skipping = b"", True
        self.offset = self.pos - len(self._buf)
        out = []
        for line in lines:
            if not line.strip():
                continue
            if len(line) > self.MAX_LINE:
                self._say(f"commands.jsonl: a line of {len(line)}+ bytes was skipped (a command is under "
                          f"{self.MAX_LINE} bytes): {line[:60].decode(errors='replace')!r}...")
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
    return os.lstat(path)  # one place, so that a test can fake another owner (RELIABILITY S8)


def _pread(fd: int, n: int, offset: int) -> bytes:
    return os.pread(fd, n, offset)  # the reader's only read of new bytes: a test counts them (one per change)
