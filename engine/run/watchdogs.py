"""Watchdogs: read the metrics as they are logged and raise alerts with a suggested remedy.

Pure Python on floats (no torch), so each detector is unit-tested on synthetic series. The state is
a plain dict saved in checkpoints, so a resumed run does not raise a false alarm (RELIABILITY N6).

- non-finite loss or gradients: the trainer skips the step; engine/run/escalation.py words the alerts and
  escalates a streak.
- plateau early in training (the book's local minimum, 5.4.3): the smoothed loss has stopped falling
  while most of the data is still unseen -> suggest `rescue`.
- spike: the logged loss jumps well above the smoothed loss -> suggest `rollback`. A spiking interval is
  kept out of the smoothed loss (an outlier must not raise its own baseline) and counted in `spike_run`,
  the intervals in a row that spiked; engine/run/escalation.py escalates a sustained spike (RELIABILITY N4).
- skip threshold (`skip_threshold`): the loss level above which a single optimizer step is skipped on the
  device (engine/run/step_guard.py), from the smoothed loss and the spread of the per-step losses around it
  (an EMA of their mean squared deviation, fed at each log). Conservative: only a clear outlier (above
  both 3x the smoothed loss and 6 spreads over it), never during warm-up or before SKIP_MIN_INTERVALS
  calm logged intervals. The ladder for spikes: warn (one interval), skip (one step), pause or roll back
  (sustained).
- overfitting: validation loss rose at two evaluations in a row while the training loss fell.
- out of memory: `oom_alert` with what to change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

EMA = 0.8  # smoothing of the logged loss (per logging interval)
SKIP_SIGMAS, SKIP_RATIO = 6.0, 3.0  # a step is skipped above max(smooth + 6 spreads, 3x smooth)
SKIP_MIN_INTERVALS = 10  # calm logged intervals that measured the spread before the skip is armed


@dataclass
class Alert:
    kind: str  # nan | plateau | spike | overfitting | oom
    message: str
    suggest: str  # the control that remedies it: pause, rollback, rescue, stop, set_lr
    severity: str = "warning"

    def fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "suggest": self.suggest, "severity": self.severity}


@dataclass
class Watchdogs:
    total_steps: int
    warmup_steps: int = 0
    plateau_window: int = 0  # steps; 0 = max(50, 10% of the run)
    plateau_rel_drop: float = 0.01  # less than 1% better over the window counts as flat
    spike_factor: float = 2.0
    state: dict[str, Any] = field(default_factory=lambda: {
        "smooth": None, "history": [], "evals": [], "plateau_at": None, "spike_at": None, "overfit_at": None})

    def window(self) -> int:
        return self.plateau_window or max(50, self.total_steps // 10)

    def on_metrics(self, step: int, loss: float, epoch_share: float, loss_sq: float | None = None) -> list[Alert]:
        """Feed one logged (interval-mean) loss, and the interval's mean squared per-step loss when known (it
        measures the spread for the skip threshold); returns the alerts it raises."""
        s = self.state
        alerts: list[Alert] = []
        if not math.isfinite(loss):
            return alerts
        smooth = s["smooth"]
        if smooth is not None and len(s["history"]) >= 5 and loss > self.spike_factor * smooth:
            s["spike_run"] = s.get("spike_run", 0) + 1
            if s["spike_at"] is None or step - s["spike_at"] >= self.window():
                s["spike_at"] = step
                alerts.append(Alert("spike", f"loss jumped to {loss:.3g} at step {step}, {loss / smooth:.1f}x the "
                                    f"smoothed {smooth:.3g}: the learning rate may be too high",
                                    "rollback"))
            return alerts
        s["spike_run"] = 0
        if smooth is not None and loss_sq is not None and math.isfinite(loss_sq):
            # the steps' mean squared deviation from the smoothed level: within-interval variance + offset^2
            msd = max(loss_sq - 2 * loss * smooth + smooth * smooth, 0.0)
            spread = s.get("spread")
            s["spread"] = msd if spread is None else EMA * spread + (1 - EMA) * msd
            s["spread_n"] = s.get("spread_n", 0) + 1
        s["smooth"] = smooth = loss if smooth is None else EMA * smooth + (1 - EMA) * loss
        s["history"].append([step, smooth])
        w = self.window()
        s["history"] = [h for h in s["history"] if h[0] >= step - 2 * w]
        past = [h for h in s["history"] if h[0] <= step - w]
        early = epoch_share < 0.5 and step < 0.6 * self.total_steps
        if past and early and step >= self.warmup_steps + w:
            before = past[-1][1]
            drop = (before - smooth) / max(abs(before), 1e-12)
            if drop >= self.plateau_rel_drop:
                s["plateau_at"] = None  # falling again: the next plateau is news
            elif s["plateau_at"] is None:
                s["plateau_at"] = step
                alerts.append(Alert(
                    "plateau", f"the loss has been flat ({drop:+.1%} over {w} steps) at step {step} with only "
                    f"{epoch_share:.0%} of the data seen: possibly a local minimum. Rescue rolls back about "
                    f"100 steps, lowers the learning rate for a while, then restores it", "rescue"))
        return alerts

    def skip_threshold(self, step: int) -> float:
        """The per-step loss above which the step at `step` is skipped; inf while not armed (warm-up, too little
        history, a non-positive loss level where a ratio means nothing)."""
        s = self.state
        smooth, spread = s["smooth"], s.get("spread")
        if step <= self.warmup_steps or smooth is None or spread is None or smooth <= 0 \
                or s.get("spread_n", 0) < SKIP_MIN_INTERVALS:
            return math.inf
        return max(smooth + SKIP_SIGMAS * math.sqrt(spread), SKIP_RATIO * smooth)

    def accept_level(self, level: float) -> None:
        """After a pause for a sustained spike the user resumed: the new level is the baseline, and the skip
        waits for a fresh measure of the spread around it."""
        s = self.state
        s["smooth"], s["spread"], s["spread_n"] = level, None, 0

    def on_eval(self, step: int, eval_loss: float) -> list[Alert]:
        s = self.state
        s["evals"].append([step, eval_loss, s["smooth"]])
        s["evals"] = s["evals"][-3:]
        e = s["evals"]
        if len(e) == 3 and e[0][1] < e[1][1] < e[2][1] and None not in (e[0][2], e[2][2]) and e[2][2] < e[0][2] \
                and s["overfit_at"] != e[0][0]:
            s["overfit_at"] = e[0][0]
            return [Alert("overfitting", f"validation loss rose from {e[0][1]:.3g} to {e[2][1]:.3g} while the "
                          "training loss fell: the model is memorising. Stop, or roll back to the best checkpoint",
                          "stop")]
        return []


def oom_alert(batch_size: int, grad_accum: int, backed_off: bool) -> Alert:
    if backed_off:
        return Alert("oom", f"out of memory: micro-batch halved to {batch_size} and accumulation doubled to "
                     f"{grad_accum} (same effective batch); training goes on", "pause")
    return Alert("oom", f"out of memory at micro-batch {batch_size}: lower train.batch_size and raise "
                 "train.grad_accum to keep the effective batch, turn on train.gradient_checkpointing, use "
                 "bf16, or choose LoRA/QLoRA; or set train.oom_backoff = true. Resume with "
                 "`llm-wizard train --resume`", "stop", "error")


def is_oom(exc: BaseException) -> bool:
    """torch.OutOfMemoryError and every other form of the same fault (engine.run.oom, RELIABILITY O3)."""
    from engine.run.oom import is_oom as classify

    return classify(exc)


_fired: set[tuple[str, int]] = set()


def fault_budget(kind: str = "oom_over") -> int | None:
    """Test hook: LLMW_FAULT=oom_over:<tokens> makes a fake allocator (engine/run/batch_finder.py) raise
    torch.OutOfMemoryError for every micro-batch of more than <tokens> tokens, for the whole run (a
    device of that size), not once. None when not set."""
    for part in filter(None, os.environ.get("LLMW_FAULT", "").split(",")):
        name, _, arg = part.partition(":")
        if name == kind and arg.isdigit():
            return int(arg)
    return None


def fault(kind: str, step: int, attempt: int | None = None) -> str | None:
    """Test hook: LLMW_FAULT=<kind>@step:<k>[:<arg>] fires once per process at step k; returns the arg
    ('' if none). `k` may be a range `a-b` (each step once). `<kind>@try:<k>` counts optimizer-step
    attempts of this process instead (`attempt`), which never repeat: skipped steps and rollbacks reuse
    step numbers. Kinds the trainer knows: nan (loss x NaN), spike (loss x<arg>, e.g. x50),
    oom (raise OutOfMemoryError), raise. `fault_budget` reads the one fault that is a condition rather
    than an event (oom_over:<tokens>). LLMW_FAULT_RANK=<r> limits the faults to the process of rank r of a
    multi-process run (a fault one rank alone sees, as a bad batch is)."""
    spec = os.environ.get("LLMW_FAULT", "")
    only = os.environ.get("LLMW_FAULT_RANK")
    if only is not None and os.environ.get("RANK", "0") != only:
        return None
    for part in filter(None, spec.split(",")):
        name, _, rest = part.partition("@")
        counter, _, rest = rest.partition(":")
        k, _, arg = rest.partition(":")
        lo, _, hi = k.partition("-")
        at = {"step": step, "try": attempt}.get(counter)
        if name != kind or at is None or not lo.isdigit() or not (hi or lo).isdigit():
            continue
        if int(lo) <= at <= int(hi or lo) and (part, at) not in _fired:
            _fired.add((part, at))
            return arg
    return None


def injected(loss: Any, step: int, attempt: int) -> Any:
    """A micro-batch's loss with the faults LLMW_FAULT asks for at this step (tests): nan, spike, raise, oom."""
    import torch

    if fault("nan", step, attempt) is not None:
        loss = loss * float("nan")
    if (factor := fault("spike", step, attempt)) is not None:
        loss = loss * float(factor.lstrip("x") or 50)
    if fault("raise", step) is not None:
        raise RuntimeError(f"injected fault at step {step}")
    if fault("oom", step) is not None:
        raise torch.OutOfMemoryError(f"injected out of memory at step {step}")
    return loss
