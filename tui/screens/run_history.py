"""What the dashboard knows about a run, folded from its events (pure: no Textual, unit-tested).

Event fields follow DESIGN.md's run folder contract; metric names are read under both the flat
names the job writes (`loss`, `lr`, `tok_per_s`, ...) and the `train/...` vocabulary, so a renamed
key degrades to a missing number rather than a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tui.widgets.chart import ChartData, Mark

MAX_POINTS = 4000  # older points are thinned so a week-long run stays cheap to draw

CONTROL_MARKS = {
    "set_lr": ("▼", "bold magenta"), "rollback": ("↺", "bold yellow"), "rescue": ("↺", "bold green"),
    "pause": ("‖", "#b2b2b2"), "save": ("◆", "bold blue"), "stop": ("■", "red"),
}


def pick(event: dict[str, Any], *names: str) -> Any:
    for name in names:
        for key in (name, f"train/{name}"):
            if event.get(key) is not None:
                return event[key]
    return None


def number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v


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
    metrics_seen: bool = False
    train: list[tuple[float, float]] = field(default_factory=list)
    val: list[tuple[float, float]] = field(default_factory=list)
    lrs: list[tuple[float, float]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)  # name -> step, from events
    alerts: list[AlertView] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    error_step: int | None = None
    done: bool = False
    state_t: float = 0.0  # time of the newest state event
    message: str = ""  # what the job last said it is doing ("tokenizing", "model ready", ...)

    def apply(self, e: dict[str, Any]) -> None:
        kind = e.get("type")
        step = pick(e, "step")
        if isinstance(step, (int, float)) and kind in ("metrics", "eval", "checkpoint"):
            self.step = max(self.step, int(step)) if kind != "metrics" else int(step)
        if kind == "metrics":
            self._metrics(e)
        elif kind == "eval":
            v = number(pick(e, "val_loss", "eval/loss", "loss"))
            if v is not None and step is not None:
                self.val_loss = v
                self.val.append((float(step), v))
        elif kind == "checkpoint":
            name = e.get("name") or e.get("checkpoint") or f"step-{int(step or 0):06d}"
            self.checkpoints[name] = int(step or 0)
            self.marks.append(Mark(float(step or self.step), "◆", "bold blue"))
        elif kind == "state":
            self.state = e.get("state", self.state)
            self.state_t = float(e.get("t") or 0)
            self.total_steps = e.get("total_steps") or self.total_steps
            self.message = e.get("message") or ""
            if self.state == "paused":
                self.marks.append(Mark(float(self.step), "‖", "#b2b2b2"))
        elif kind == "alert":
            self.alerts.append(AlertView(e.get("kind", "alert"), e.get("message", ""), e.get("suggest"),
                                         int(step) if isinstance(step, (int, float)) else self.step,
                                         str(e.get("severity") or "warning")))
        elif kind == "control_ack":
            self._ack(e)
        elif kind == "error":
            self.error = e.get("message") or str(e.get("error", "error"))
            self.error_step = int(step) if isinstance(step, (int, float)) else self.step
        elif kind == "done":
            self.done = True
            self.state = e.get("state", "done") if e.get("state") in ("done", "failed", "stopped") else "done"

    def _metrics(self, e: dict[str, Any]) -> None:
        s = float(self.step)
        self.total_steps = pick(e, "total_steps", "max_steps") or self.total_steps
        loss = number(pick(e, "loss"))
        if loss is not None:
            self.loss = loss
            if math.isfinite(loss):
                self.train.append((s, loss))
        lr = number(pick(e, "lr"))
        if lr is not None:
            self.lr = lr
            self.lrs.append((s, lr))
        self.tok_per_s = number(pick(e, "tok_per_s", "tokens_per_s")) or self.tok_per_s
        self.step_ms = number(pick(e, "step_ms")) or self.step_ms
        self.mfu = number(pick(e, "mfu")) or self.mfu
        self.eta_s = number(pick(e, "eta_s", "eta"))
        self.data_share = number(pick(e, "epoch", "data_share", "epoch_share")) or self.data_share
        self.grad_norm = number(pick(e, "grad_norm")) or self.grad_norm
        self.peak_mem = number(pick(e, "peak_mem", "sys/gpu_mem", "sys/rss")) or self.peak_mem
        self.rss = number(e.get("sys/rss")) or self.rss
        if e.get("sys/gpu_mem") is not None or e.get("sys/rss") is not None:
            self.on_cpu = e.get("sys/gpu_mem") is None
        shares = e.get("moe/expert_share")
        if isinstance(shares, list) and shares and all(number(x) is not None for x in shares):
            self.expert_share = [float(x) for x in shares]
        self.metrics_seen = True
        if self.state == "starting":
            self.state = "running"
        if len(self.train) > MAX_POINTS:
            self.train = self.train[::2]
            self.lrs = self.lrs[::2]

    def _ack(self, e: dict[str, Any]) -> None:
        self.acks.append(e)
        cmd = e.get("cmd")
        if not e.get("ok", True):
            return
        if cmd in ("rollback", "rescue"):
            back = e.get("step")
            target = self.checkpoints.get(e.get("checkpoint", ""), back)
            if isinstance(target, (int, float)):
                # the active branch goes on from the checkpoint: later points belong to the abandoned one
                self.train = [p for p in self.train if p[0] <= target]
                self.val = [p for p in self.val if p[0] <= target]
                self.lrs = [p for p in self.lrs if p[0] <= target]
                self.step = int(target)
        if cmd in CONTROL_MARKS and cmd != "pause":
            ch, style = CONTROL_MARKS[cmd]
            self.marks.append(Mark(float(self.step), ch, style))

    def apply_status(self, status: dict[str, Any]) -> None:
        """status.json wins when it is newer than the last state event, or when it says the process is
        gone (read_status turns a dead pid into `crashed`)."""
        self.total_steps = status.get("total_steps") or self.total_steps
        if status.get("message"):
            self.message = status["message"]
        state = status.get("state")
        if not state or self.done:
            return
        if state not in ("starting", "running", "paused", "stopping") or float(status.get("updated") or 0) > self.state_t:
            self.state = state

    def chart(self) -> ChartData:
        return ChartData(train=list(self.train), val=list(self.val), lr=list(self.lrs), marks=list(self.marks))

    def recent_alerts(self, n: int) -> list[AlertView]:
        """The newest `n` alerts, newest first."""
        return self.alerts[::-1][:n]
