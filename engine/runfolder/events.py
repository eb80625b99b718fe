"""events.jsonl: what a run tells everyone who watches it, one typed event a line.

Every line is `{"v": 1, "t": <unix time>, "type": <kind>, ...}`; the kinds and their keys are the
frozen dataclasses of engine/runfolder/event_types.py, one per kind (DESIGN.md's contract; keys are added,
never renamed), which this module re-exports (`events.Metrics`). The job builds them and `EventLog.emit` appends them; readers get them back from `read` / `follow` /
`wait_ack`, checked the same way (engine/runfolder/record.py): a line that is not an event of this
version is skipped with its reason (`Skipped`), never raised into a UI. Keys a newer job added land
in an event's `extra`, so nothing is lost when an older reader re-writes a line.

The job writes with one `write()` a batch (O_APPEND), so a reader sees whole lines or a line still
being written, which it leaves for the next read. No pipes, no sockets: the job never blocks on a
reader, and a reader can die and come back at any time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checkpoints.guards import storage_error
from engine.runfolder import files
from engine.runfolder.event_types import (
    KINDS, TYPES, VERSION, Alert, Checkpoint, ControlAck, Done, Download, Error, Eval, Event, Metrics, State,
    from_dict, parse,
)
from engine.runfolder.record import Invalid

# the kinds are part of this module's API: callers write events.Metrics, events.parse
__all__ = ["EVENTS", "KINDS", "TYPES", "VERSION", "Alert", "Batch", "Checkpoint", "ControlAck", "Done", "Download",
           "Error", "Eval", "Event", "EventLog", "Metrics", "Skipped", "State", "end_offset", "find_ack", "follow",
           "from_dict", "last", "parse", "read", "wait_ack"]

EVENTS = "events.jsonl"


# ---- writing ------------------------------------------------------------------------------------

class EventLog:
    """Append-only events.jsonl; `emit` buffers, `flush` writes the batch with one write() call.

    Listeners (`listen`: trackers, notifications, engine/track/) get every emitted event after it is buffered;
    one must return at once (it queues for a thread of its own) and may emit from that thread, so emit and
    flush hold a lock. `close` closes the listeners first: what they still have to say is written."""

    def __init__(self, run: Path, echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = Path(run) / EVENTS
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._buf: list[str] = []
        # RELIABILITY C13: bytes a full or read-only disk refused, written first once it takes them again; a
        # line cut by a previous job that died holding some is ended, so the next line starts clean
        self._held = b"" if _ends_whole(self.path) else b"\n"
        self.blocked: str | None = None  # why the last flush could not write, None once it could
        self._echo = echo
        self._lock = threading.Lock()
        self._listeners: list[Any] = []  # objects with on_event(Event) and close()

    def listen(self, listener: Any) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event, flush: bool = True) -> Event:
        if not isinstance(event, Event):
            raise TypeError(f"emit takes an engine.runfolder.events.Event, not {type(event).__name__}")
        data = event.to_dict()
        with self._lock:
            self._buf.append(json.dumps(data) + "\n")
        if self._echo:
            self._echo(data)
        for listener in self._listeners:
            listener.on_event(event)
        if flush:
            self.flush()
        return event

    def flush(self) -> None:
        """Write what is buffered; a storage failure keeps the rest in memory (`blocked` says why), never raises."""
        with self._lock:
            data = self._held + "".join(self._buf).encode()
            self._buf.clear()
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError as e:
                self.blocked = storage_error(e, self.path.parent)
                if self.blocked is None:
                    raise
            else:
                self.blocked = None
            self._held = data

    def close(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        self.flush()
        os.close(self._fd)


def _ends_whole(path: Path) -> bool:
    """Whether `path` is empty or ends with a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:
        return True


# ---- reading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Skipped:
    """A line that is not an event: where it starts, why it was skipped, and its beginning."""
    offset: int
    reason: str
    text: str

    def describe(self) -> str:
        return f"events.jsonl byte {self.offset}: line skipped ({self.reason}): {self.text}"


@dataclass(frozen=True)
class Batch:
    """What one read found: the events with the offset just after each, the lines skipped, and the
    offset to continue from."""
    events: list[tuple[Event, int]]
    skipped: list[Skipped]
    offset: int

    def __iter__(self) -> Iterator[Event]:
        return (e for e, _ in self.events)


def read(run: str | os.PathLike[str], from_offset: int = 0, *, limit: int | None = None) -> Batch:
    """Complete lines from byte `from_offset` on, about `limit` bytes of them at most (None: to the end;
    call again from `offset` for the rest); a line still being written is read next time. Memory stays
    bounded by the events returned: the file is read in chunks, and a line over MAX_LINE bytes is skipped
    without being held whole. A FIFO or a link in place of the file raises NotAFile (one line)."""
    out: list[tuple[Event, int]] = []
    skipped: list[Skipped] = []
    scan = files.Lines(Path(run) / EVENTS, from_offset, limit)
    for line, at, end, whole in scan:
        if not whole:  # a line no writer of ours makes: skipped, never held whole; an event written onto
            skipped.append(Skipped(at, f"line longer than {files.MAX_LINE} bytes", line[:120].decode(
                errors="replace")))  # its end (a torn line) is still found below
        _parse_line(line, at, end, out, skipped, quiet=not whole)
    return Batch(out, skipped, scan.offset)


_EVENT_START = b'{"v": '  # how every line the job writes begins (json.dumps of to_dict)


def _parse_line(line: bytes, at: int, end: int, out: list[tuple[Event, int]], skipped: list[Skipped],
                quiet: bool = False) -> None:
    if not line.strip():
        return
    try:
        out.append((parse(line), end))
        return
    except Invalid as e:
        reason = str(e)
    cut = line.rfind(_EVENT_START)
    if cut > 0:  # garbage without a newline, then a whole event: the garbage goes, the event stays
        try:
            out.append((parse(line[cut:]), end))
            reason = "garbage before an event on one line"
        except Invalid:
            pass
    if not quiet:
        skipped.append(Skipped(at, reason, line[:120].decode(errors="replace")))


def follow(run: str | os.PathLike[str], from_offset: int = 0, *, poll_s: float = 0.2, until_exit: bool = True,
           stop: Callable[[], bool] | None = None, live: Callable[[], bool] | None = None,
           on_skip: Callable[[Skipped], None] | None = None) -> Iterator[tuple[Event, int]]:
    """Yield (event, offset after it) as the job writes them; ends after `done`, or when the job is gone
    (`until_exit`: `live()` says False), or when `stop()` says so. Restart from the last offset to miss
    nothing. Lines that are not events go to `on_skip`. Reads bounded chunks: a huge backlog streams."""
    offset = from_offset
    while True:
        batch, before = read(run, offset, limit=files.CHUNK), offset
        for problem in batch.skipped:
            if on_skip:
                on_skip(problem)
        for event, offset in batch.events:
            yield event, offset
            if until_exit and isinstance(event, Done):
                return
        offset = batch.offset
        if batch.offset - before >= files.CHUNK:  # a backlog: read on before sleeping
            continue
        if stop and stop():
            return
        if until_exit and not batch.events and live is not None and not live():
            yield from read(run, offset).events  # written just before it went
            return
        time.sleep(poll_s)


def end_offset(run: str | os.PathLike[str]) -> int:
    """Where the next event will start (after the last complete line), found from the file's end: what a
    reader of only what comes next (`control` waiting for its ack) needs, at once on a log of any size."""
    return files.end_offset(Path(run) / EVENTS)


def last(run: str | os.PathLike[str], n: int, *, most: int = 64 << 20) -> Batch:
    """The last `n` events, read from the end of the file in growing windows (1 MiB, 8, 64: `most`), so
    that time and memory follow `n`, not the log's size; `offset` is where following goes on."""
    path, window = Path(run) / EVENTS, 1 << 20
    while True:
        start = files.tail_start(path, window)
        batch = read(run, start)
        if len(batch.events) >= n or start == 0 or window >= most:
            return Batch(batch.events[-n:] if n else [], batch.skipped, batch.offset)
        window *= 8


def find_ack(events: Iterator[Event] | list[Event], cid: str) -> ControlAck | None:
    return next((e for e in events if isinstance(e, ControlAck) and e.id == cid), None)


def wait_ack(run: str | os.PathLike[str], cid: str, timeout: float = 30.0, *, from_offset: int = 0,
             poll_s: float = 0.05, live: Callable[[], bool] | None = None) -> ControlAck | None:
    """The `control_ack` event for command `cid`, or None on timeout or when the job has exited
    (`live()` is asked about once a second)."""
    deadline = time.monotonic() + timeout
    offset, last_check = from_offset, 0.0
    while True:
        batch = read(run, offset, limit=files.CHUNK)
        more, offset = batch.offset - offset >= files.CHUNK, batch.offset
        if (ack := find_ack(list(batch), cid)) is not None:
            return ack
        if more:  # a backlog: read on before sleeping
            continue
        now = time.monotonic()
        if now > deadline:
            return None
        if live is not None and now - last_check > 1.0:
            last_check = now
            if not live():
                return find_ack(list(read(run, offset)), cid)
        time.sleep(poll_s)
