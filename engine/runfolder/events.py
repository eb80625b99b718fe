"""events.jsonl: what a run tells everyone who watches it, one typed event a line.

Every line is `{"v": 1, "t": <unix time>, "type": <kind>, ...}`; the kinds and their keys are the
frozen dataclasses below, one per kind (DESIGN.md's contract; keys are added, never renamed). The job
builds them and `EventLog.emit` appends them; readers get them back from `read` / `follow` /
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engine.checkpoints.guards import storage_error
from engine.runfolder import files, record
from engine.runfolder.record import Invalid, key

VERSION = 1
EVENTS = "events.jsonl"


def _now() -> float:
    return round(time.time(), 3)


@dataclass(frozen=True, kw_only=True)
class Event:
    """The keys every event has; `TYPE` is the line's `type`."""
    TYPE: ClassVar[str] = ""
    v: int = VERSION
    t: float = field(default_factory=_now)
    extra: dict[str, Any] = record.extra_field()

    def __post_init__(self) -> None:
        record.validate(self)

    def to_dict(self) -> dict[str, Any]:
        body = record.encode(self)
        return {"v": body.pop("v"), "t": body.pop("t"), "type": self.TYPE, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_keys(cls, **fields: Any) -> Event:
        """Built from its JSON keys (`train/loss`, ...): for writers that gather a dict of metrics.
        A key this kind does not declare is refused (a writer declares what it writes)."""
        built = record.decode(cls, fields)
        if built.extra:
            raise Invalid(f"{cls.__name__}: undeclared keys {', '.join(sorted(built.extra))}")
        return built


@dataclass(frozen=True, kw_only=True)
class Metrics(Event):
    """One logging interval of training (means over its optimizer steps)."""
    TYPE: ClassVar[str] = "metrics"
    step: int
    epoch: float  # share of the dataset seen: 1.0 = all of it once
    tokens: int
    eta_s: float
    branch: int
    train_loss: float = key("train/loss")
    # null: not known to the writer (a hosted job reports its loss, not its learning rate or gradients)
    train_lr: float | None = key("train/lr")
    train_grad_norm: float | None = key("train/grad_norm")
    train_tok_per_s: float | None = key("train/tok_per_s")
    train_step_ms: float | None = key("train/step_ms")
    train_mfu: float | None = key("train/mfu")  # null: no known peak FLOPS (the CPU, an unlisted GPU)
    train_loss_smooth: float | None = key("train/loss_smooth")
    # techniques that say more (engine/techniques/*: `metrics`)
    distill_ce: float | None = key("distill/ce", default=None)
    distill_kl: float | None = key("distill/kl", default=None)
    moe_ce: float | None = key("moe/ce", default=None)
    moe_aux_loss: float | None = key("moe/aux_loss", default=None)
    moe_expert_share: list[float] | None = key("moe/expert_share", default=None)  # per expert, in order
    # preference tuning (dpo, orpo): the implicit rewards of the chosen and rejected answers, their margin, the
    # share of pairs ranked right; orpo also its NLL term and log odds ratio
    pref_reward_chosen: float | None = key("pref/reward_chosen", default=None)
    pref_reward_rejected: float | None = key("pref/reward_rejected", default=None)
    pref_margin: float | None = key("pref/margin", default=None)
    pref_accuracy: float | None = key("pref/accuracy", default=None)
    pref_nll: float | None = key("pref/nll", default=None)
    pref_log_odds: float | None = key("pref/log_odds", default=None)
    # the machine: peak GPU memory on a GPU, peak resident memory on the CPU (bytes)
    sys_gpu_mem: int | None = key("sys/gpu_mem", default=None)
    sys_rss: int | None = key("sys/rss", default=None)


@dataclass(frozen=True, kw_only=True)
class Eval(Event):
    TYPE: ClassVar[str] = "eval"
    step: int
    eval_loss: float = key("eval/loss")
    eval_ppl: float = key("eval/ppl")
    best: bool | None = None  # the lowest eval loss of the run so far (engine/run/evaluation.py)
    best_step: int | None = None  # the step of the best evaluation so far
    since_best: int | None = None  # evaluations since then (eval.patience stops the run at that many)
    samples: list[dict[str, str]] | None = None  # eval.prompts: [{"prompt", "text"}], greedy, as trained


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Event):
    TYPE: ClassVar[str] = "checkpoint"
    step: int
    name: str
    branch: int
    path: str
    reason: str  # interval | requested | end | best | a stop's reason
    deleted: list[str]  # older checkpoints rotated away by this save
    eval_loss: float | None = None  # the evaluation at this very step, if there was one
    best: bool | None = None  # the best checkpoint by eval loss (never rotated away)


@dataclass(frozen=True, kw_only=True)
class State(Event):
    """The run's state changed, or it says what it is doing (preparing, resumed, rolled back)."""
    TYPE: ClassVar[str] = "state"
    state: str
    step: int
    message: str
    # "model ready"
    params: int | None = None
    trainable_params: int | None = None
    total_steps: int | None = None
    train_blocks: int | None = None
    val_blocks: int | None = None
    tokens_per_step: int | None = None
    data: dict[str, Any] | None = None  # the data as trained: format, template, examples, tokens, trained_tokens...
    # several processes
    world_size: int | None = None
    strategy: str | None = None
    num_machines: int | None = None
    backend: str | None = None
    device: str | None = None
    # resume and rollback
    resumed_from: str | None = None
    rollback_to: str | None = None
    branch: int | None = None
    cleaned: list[str] | None = None  # leftovers of killed saves removed on resume


@dataclass(frozen=True, kw_only=True)
class Alert(Event):
    """Something a person should know, with the control that remedies it (`suggest`)."""
    TYPE: ClassVar[str] = "alert"
    step: int | None = None
    kind: str  # nan | spike | plateau | overfitting | oom | rollback | logout | batch_size | tracker | notify | early_stop ...
    message: str
    suggest: str | None = None  # pause | resume | rollback | rescue | set_lr | stop; "" or absent: nothing
    severity: str = "warning"  # error | warning | info
    # skipped steps and spikes
    skipped: int | None = None
    loss: float | None = None
    threshold: float | None = None
    # automatic rollback
    checkpoint: str | None = None
    branch: int | None = None
    multiplier: float | None = None
    skipped_from: list[int] | None = None  # [epoch, block]
    skipped_to: list[int] | None = None
    dropped: str | None = None  # the cause of an automatic rollback a user's rollback replaced
    # the batch finder's choice (engine/run/oom.py BatchChoice)
    micro_batch: int | None = None
    grad_accum: int | None = None
    effective: int | None = None
    largest_fitting: int | None = None
    probes: list[int] | None = None
    peaks: dict[str, int] | None = None
    limit_bytes: int | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ControlAck(Event):
    """The answer to one command, by its id: {"id", "cmd", "ok", "step", "message"} (`control --json`)."""
    TYPE: ClassVar[str] = "control_ack"
    id: str | None  # null: a line of commands.jsonl that was not a command
    cmd: str
    step: int
    ok: bool
    message: str
    duplicate: bool | None = None  # the id was answered before: this repeats the first outcome
    first_step: int | None = None
    checkpoint: str | None = None
    branch: int | None = None
    lr: float | None = None
    multiplier: float | None = None
    until: int | None = None  # rescue: the step where the lowered rate ends


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    TYPE: ClassVar[str] = "error"
    message: str
    kind: str  # user | oom | internal | rank
    step: int | None = None
    rank: int | None = None
    exitcode: int | None = None  # the rank's exit code, as the launcher reported it
    traceback: str | None = None


@dataclass(frozen=True, kw_only=True)
class Download(Event):
    """A Hub repo arriving in the Hub cache before the first step (about once a second, then `finished`)."""
    TYPE: ClassVar[str] = "download"
    repo: str  # the Hub id
    field: str  # the setting that names it: model.path | options.teacher | tokenizer.path | data.path
    commit: str  # the commit it resolved to (kept for a resume)
    done_bytes: int  # in the cache, of the planned files (a resumed download starts above 0)
    total_bytes: int
    files_done: int
    files_total: int
    rate: float  # bytes per second, smoothed
    eta_s: float | None = None  # null: no rate yet
    finished: bool = False


@dataclass(frozen=True, kw_only=True)
class Done(Event):
    """The last event of a job process."""
    TYPE: ClassVar[str] = "done"
    state: str  # done | stopped | failed
    step: int
    exit_code: int | None = None
    final: str | None = None  # the final/ folder
    # what the technique's final save reports (LoRA: the adapter's size next to the base model's)
    adapter_bytes: int | None = None
    base_bytes: int | None = None
    summary: str | None = None
    final_from: str | None = None  # the checkpoint final/ holds (checkpoint.final = "best"); absent: the last weights
    best: str | None = None  # the checkpoint with the lowest eval loss
    best_eval_loss: float | None = None
    early_stop: bool | None = None  # eval.patience ended the run before its last step


KINDS: dict[str, type[Event]] = {c.TYPE: c for c in (Metrics, Eval, Checkpoint, State, Alert, ControlAck, Error,
                                                     Download, Done)}
TYPES = tuple(KINDS)


def from_dict(data: Any) -> Event:
    """The typed event of one JSON object; Invalid saying why it is not one."""
    if not isinstance(data, dict):
        raise Invalid(f"not a JSON object but {type(data).__name__}")
    v, kind = data.get("v"), data.get("type")
    if v != VERSION:
        raise Invalid(f"event version {v!r}: this llm-wizard reads version {VERSION}"
                      + (" (the run was written by a newer one)" if isinstance(v, int) and v > VERSION else ""))
    cls = KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise Invalid(f"unknown event type {kind!r}")
    return record.decode(cls, data, skip=("type",))


def parse(line: bytes | str) -> Event:
    return from_dict(record.load_json(line))


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
