"""The events of events.jsonl, one frozen dataclass per kind (DESIGN.md's contract; keys are added, never
renamed), and how one line becomes a typed event (`from_dict`, `parse`). engine/runfolder/events.py writes and
reads the file."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.runfolder import record
from engine.runfolder.record import Invalid, key

VERSION = 1


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
