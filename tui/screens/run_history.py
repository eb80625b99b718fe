"""What the dashboard knows about a run, folded from its typed events (pure: no Textual, unit-tested).

The events are engine/runfolder/events.py's dataclasses, as the job writes them and the run folder's
reader checked them: a metric is read from its one field (`Metrics.train_loss` is `train/loss` on disk),
never guessed from other names. Lines the reader skipped are listed in `skipped` with their reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.runfolder import events as ev
from engine.runfolder.status import Status
from tui.widgets.chart import DIMMED, ChartData, Mark, Series

MAX_POINTS = 4000  # older points are thinned so a week-long run stays cheap to draw

CONTROL_MARKS = {
    "set_lr": ("▼", "bold magenta"), "rollback": ("↺", "bold yellow"), "rescue": ("↺", "bold green"),
    "pause": ("‖", "#b2b2b2"), "save": ("◆", "bold blue"), "stop": ("■", "red"),
}


@dataclass
class AlertView:
    kind: str
    message: str
    suggest: str | None
    step: int | None
    severity: str = "warning"  # error | warning | info, as the engine's watchdogs set it


@dataclass
class RunHistory:
    state: str = "starting"
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tok_per_s: float | None = None
    step_ms: float | None = None
    mfu: float | None = None
    eta_s: float | None = None
    data_share: float | None = None  # share of the dataset seen (epochs, 1.0 = all of it once)
    grad_norm: float | None = None
    peak_mem: float | None = None
    rss: float | None = None  # the run's peak resident memory (sys/rss: a run on the CPU)
    on_cpu: bool | None = None  # None until a metrics event says where the run trains
    expert_share: list[float] | None = None  # an MoE run's share of routed tokens per expert
    preference: tuple[float, float] | None = None  # dpo/orpo: (reward margin, share of pairs ranked right)
    metrics_seen: bool = False
    train: list[tuple[float, float]] = field(default_factory=list)
    val: list[tuple[float, float]] = field(default_factory=list)
    lrs: list[tuple[float, float]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)  # name -> step, from events
    alerts: list[AlertView] = field(default_factory=list)
    acks: list[ev.ControlAck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # lines of events.jsonl that were not events, why
    error: str | None = None
    error_step: int | None = None
    done: bool = False
    state_t: float = 0.0  # time of the newest state event
    abandoned: list[list[tuple[float, float]]] = field(default_factory=list)  # train curves rollbacks left behind
    samples: list[dict[str, str]] = field(default_factory=list)  # eval.prompts' generations at the newest eval
    samples_step: int | None = None
    best: str | None = None  # the checkpoint with the lowest eval loss so far (its event says `best`)
    message: str = ""  # what the job last said it is doing ("tokenizing", "model ready", ...)
    download: dict[str, Any] | None = None  # status.json's `download` while a Hub model arrives

    def apply(self, e: ev.Event) -> None:
        if isinstance(e, ev.Metrics):
            self.step = e.step
            self._metrics(e)
        elif isinstance(e, ev.Eval):
            self.step = max(self.step, e.step)
            self.val_loss = e.eval_loss
            self.val.append((float(e.step), e.eval_loss))
            if e.samples:
                self.samples, self.samples_step = list(e.samples), e.step
        elif isinstance(e, ev.Checkpoint):
            self.step = max(self.step, e.step)
            self.checkpoints[e.name] = e.step
            self.marks.append(Mark(float(e.step), "◆", "bold blue"))
            self.best = e.name if e.best else self.best
        elif isinstance(e, ev.State):
            self.state = e.state
            self.state_t = e.t
            self.total_steps = e.total_steps or self.total_steps
            self.message = e.message
            if self.state == "paused":
                self.marks.append(Mark(float(self.step), "‖", "#b2b2b2"))
            if e.rollback_to:  # a person's rollback or an automatic one: the branch after it stays, dimmed
                self._branch_off(float(e.step))
                self.marks.append(Mark(float(e.step), "↺", "bold yellow"))
        elif isinstance(e, ev.Alert):
            self.alerts.append(AlertView(e.kind, e.message, e.suggest, self.step if e.step is None else e.step,
                                         e.severity))
        elif isinstance(e, ev.ControlAck):
            self._ack(e)
        elif isinstance(e, ev.Error):
            self.error = e.message
            self.error_step = self.step if e.step is None else e.step
        elif isinstance(e, ev.Done):
            self.done = True
            self.state = e.state if e.state in ("done", "failed", "stopped") else "done"

    def _metrics(self, e: ev.Metrics) -> None:
        s = float(self.step)
        self.loss = e.train_loss
        if math.isfinite(e.train_loss):
            self.train.append((s, e.train_loss))
        self.lr = e.train_lr
        if e.train_lr is not None:  # null: a hosted job, which does not report it
            self.lrs.append((s, e.train_lr))
        self.tok_per_s = e.train_tok_per_s
        self.step_ms = e.train_step_ms
        self.mfu = e.train_mfu if e.train_mfu is not None else self.mfu
        self.eta_s = e.eta_s
        self.data_share = e.epoch
        self.grad_norm = e.train_grad_norm
        mem = e.sys_gpu_mem if e.sys_gpu_mem is not None else e.sys_rss
        self.peak_mem = float(mem) if mem is not None else self.peak_mem
        self.rss = float(e.sys_rss) if e.sys_rss is not None else self.rss
        if e.sys_gpu_mem is not None or e.sys_rss is not None:
            self.on_cpu = e.sys_gpu_mem is None
        if e.moe_expert_share:
            self.expert_share = [float(x) for x in e.moe_expert_share]
        if e.pref_margin is not None and e.pref_accuracy is not None:
            self.preference = (float(e.pref_margin), float(e.pref_accuracy))
        self.metrics_seen = True
        if self.state == "starting":
            self.state = "running"
        if len(self.train) > MAX_POINTS:
            self.train = self.train[::2]
            self.lrs = self.lrs[::2]

    def _ack(self, e: ev.ControlAck) -> None:
        self.acks.append(e)
        if not e.ok:
            return
        if e.cmd in ("rollback", "rescue"):
            target = self.checkpoints.get(e.checkpoint or "", e.step)
            self._branch_off(float(target))  # done already if the job's state event came first
            self.step = target
        if e.cmd in CONTROL_MARKS and e.cmd != "pause":
            ch, style = CONTROL_MARKS[e.cmd]
            mark = Mark(float(self.step), ch, style)
            # the job's rollback state event marked this point already: one mark, in the control's style
            self.marks = [m for m in self.marks if (m.step, m.char) != (mark.step, mark.char)] + [mark]

    def _branch_off(self, target: float) -> None:
        """The active branch goes on from `target`: later points belong to the abandoned one, kept dimmed."""
        gone = [p for p in self.train if p[0] > target]
        if gone:
            self.abandoned.append([p for p in self.train if p[0] <= target][-1:] + gone)  # joined at its origin
        self.train = [p for p in self.train if p[0] <= target]
        self.val = [p for p in self.val if p[0] <= target]
        self.lrs = [p for p in self.lrs if p[0] <= target]

    def skip(self, problem: ev.Skipped) -> None:
        """A line of events.jsonl the reader could not take (kept, newest last, for the message line)."""
        self.skipped.append(problem.describe())

    def apply_status(self, status: Status | None) -> None:
        """status.json wins when it is newer than the last state event, or when it says the process is
        gone (the reader turns a dead pid into `crashed`)."""
        if status is None:
            return
        self.total_steps = status.total_steps or self.total_steps
        self.download = status.download if status.state == "starting" else None  # a Hub download's progress
        if status.message:
            self.message = status.message
        if self.done:
            return
        if not status.live or status.state == "stalled" or (status.updated or 0.0) > self.state_t:
            self.state = status.state

    def chart(self) -> ChartData:
        return ChartData(train=list(self.train), val=list(self.val), lr=list(self.lrs), marks=list(self.marks),
                         extra=[Series(list(points), DIMMED, "abandoned branch") for points in self.abandoned])

    def recent_alerts(self, n: int) -> list[AlertView]:
        """The newest `n` alerts, newest first."""
        return self.alerts[::-1][:n]
