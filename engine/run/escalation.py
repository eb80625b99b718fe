"""Escalation of numerical trouble: non-finite steps in a row, a sustained loss spike, a collapsing fp16 scale.

RELIABILITY N3-N5. One bad step is routine (skipped by engine/run/step_guard.py, logged, training goes on);
trouble that persists needs a person or a rollback:
- N3: `train.nonfinite_patience` skipped steps in a row. The device flags are read only at log,
  evaluation and checkpoint boundaries, so the streak is counted over those reads: a streak that spans
  two logging intervals (or a resume: the count lives in the watchdogs' state, saved in checkpoints)
  still counts.
- N4: the ladder for loss spikes is warn, skip, pause, roll back. One logged interval above 2x the smoothed
  loss warns (engine/run/watchdogs.py); a single step far above the recent level (`skip_threshold`) is skipped
  on the device like a non-finite step (`train.spike_skip`) and alerted at the next read; it escalates when
  the detector saw `train.spike_patience` logging intervals in a row spike, or when that many intervals'
  worth of steps in a row were skipped as spikes (`skip_patience`).
Either one pauses with a rollback offer, or, with `train.auto_rollback`, rolls back to the newest valid
checkpoint before the trouble began, halves the LR through the schedule's persisted multiplier (the one
set_lr and rescue use) and moves the data position past the batches that were trained while it lasted
(PaLM's remedy for spikes: restart before the spike and skip the batches around it). At most
`train.auto_rollback_max` times until the run has gone RECOVERED_STEPS past the trouble; then it pauses.
- N5: fp16's GradScaler halves its scale on every overflow; a scale below a floor, or many halvings
  within a window, means the gradients overflow whatever the scale: `ScaleMonitor` warns. It reads the
  scale at log time only.
Every decision is an alert event (kind, message, suggest) for the dashboard. The functions act on the
trainer through `Recoverable`, the part of it they read and steer; the trainer imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.run.watchdogs import Alert, Watchdogs
from engine.runfolder import events as ev

if TYPE_CHECKING:
    from engine.checkpoints.store import CheckpointInfo
    from engine.run.controls import LRSchedule
    from engine.spec import RunSpec

LR_FACTOR = 0.5  # each automatic rollback halves the learning rate
RECOVERED_STEPS = 200  # this far past the trouble the run has recovered: the rollback count starts again


@dataclass
class Escalation:
    """Persistent trouble, with the data range it was trained on (epoch, position before / after)."""
    cause: str  # nan | spike
    step: int  # the first step of the trouble; a rollback goes to a checkpoint before it
    start: tuple[int, int]
    end: tuple[int, int]
    detail: str
    skipped: int = 0  # steps skipped by the read that found it (nan, skipped spikes)
    level: float | None = None  # the loss of the last skipped spike step: a resume after a pause accepts it


class Recoverable(Protocol):
    """What escalation reads and steers: engine.run.trainer.Trainer on one process or each rank of several."""
    spec: RunSpec
    run: Path
    events: Any  # runfolder.EventLog, or a rank's stand-in that writes nothing
    watchdogs: Watchdogs
    schedule: LRSchedule
    accelerator: Any  # its fp16 scaler, if any
    optimizer: Any
    last: dict[str, Any]  # the last logged metrics
    step: int
    epoch: int
    position: int
    branch: int
    writes_files: bool  # rank 0 (or the only process) chooses the rollback target
    rollback_due: Escalation | None

    def arm_skip(self) -> None: ...

    def set_paused(self, paused: bool) -> None: ...

    def agree(self, text: str) -> str: ...

    def rollback(self, info: CheckpointInfo) -> None: ...


def count_nonfinite(state: dict[str, Any], flags: list[list[bool]], spans: list[list[int]], base: int,
                    patience: int) -> tuple[list[int], Escalation | None]:
    """Feed the flags read at one boundary ([loss, grad norm] not finite[, spike skipped], per step attempted
    since the last read) with each step's data span [epoch, position before, epoch, position after]. `base`
    is the step count before these steps. Returns the indices of the non-finite steps and the escalation, if
    a streak reached `patience` (the streak then counts again from zero)."""
    return count_streak(state, "nan", flags, spans, base, patience)


def _hit(cause: str, f: list[bool]) -> bool:
    nonfinite = bool(f[0] or f[1])
    return nonfinite if cause == "nan" else (len(f) > 2 and bool(f[2]) and not nonfinite)


def count_streak(state: dict[str, Any], cause: str, flags: list[list[bool]], spans: list[list[int]], base: int,
                 patience: int, losses: list[float] | None = None) -> tuple[list[int], Escalation | None]:
    """Streaks of skipped steps of one cause: "nan" (non-finite) or "spike" (loss above the skip threshold).
    An applied step ends a streak; a step skipped for the other cause neither ends nor extends it (the
    trouble goes on). The streak lives in `state` (the watchdogs' state: saved in checkpoints)."""
    key = {"nan": "nonfinite", "spike": "skip"}[cause]
    bad: list[int] = []
    escalation, extending = None, False
    applied = 0  # steps before this one that reached the weights: a skipped step takes no step number
    for i, (f, span) in enumerate(zip(flags, spans)):
        if not _hit(cause, f):
            if not any(f):
                applied += 1
                extending = False
                state[f"{key}_run"], state[f"{key}_from"] = 0, None
            continue
        bad.append(i)
        if not state.get(f"{key}_run"):
            what = "the loss" if f[0] or cause == "spike" else "the gradient norm"
            state[f"{key}_from"] = {"step": base + applied + 1, "at": span[:2], "what": what}
        state[f"{key}_run"] = state.get(f"{key}_run", 0) + 1
        run = state[f"{key}_run"]
        if escalation is None and run >= patience:
            start = state[f"{key}_from"]
            detail = (f"{start['what']} was not finite on {run} steps in a row at step {start['step']} (each "
                      "skipped)") if cause == "nan" else \
                (f"the loss was far above its recent level on {run} steps in a row from step {start['step']} "
                 "(each skipped)")
            escalation = Escalation(cause, start["step"], tuple(start["at"]), tuple(span[2:]), detail)
            extending = True
        elif extending and escalation is not None:  # the same streak goes on: skip its data too
            escalation.end = tuple(span[2:])
        if escalation is not None and losses is not None and math.isfinite(losses[i]):
            escalation.level = losses[i]  # the level a user who resumes after looking accepts
    if escalation is not None:
        escalation.skipped = len(bad)
        state[f"{key}_run"], state[f"{key}_from"] = 0, None
    return bad, escalation


def skip_patience(trainer: Recoverable) -> int:
    """Skipped spike steps in a row that escalate: as many steps as `spike_patience` logging intervals hold."""
    return trainer.spec.train.spike_patience * max(1, trainer.spec.log.every)


def on_flags(trainer: Recoverable, flags: list[list[bool]], spans: list[list[int]], base: int,
             losses: list[float] | None = None) -> Escalation | None:
    """Count the streaks; alert on skipped steps that do not (yet) escalate. Returns the escalation."""
    t = trainer.spec.train
    state = trainer.watchdogs.state
    bad, escalation = count_streak(state, "nan", flags, spans, base, t.nonfinite_patience)
    then = "roll back automatically" if t.auto_rollback else "pause the run"

    def first_step(i: int) -> int:
        return base + sum(1 for f in flags[:i] if not any(f)) + 1

    if bad and escalation is None:
        first = first_step(bad[0])
        what = "the loss" if flags[bad[0]][0] else "the gradient norm"
        run = state.get("nonfinite_run", 0)
        trainer.events.emit(ev.Alert(step=first, skipped=len(bad), kind="nan", severity="warning",
                                     suggest="rollback", message=f"{what} is not finite at step {first}: the step was "
                                     f"skipped ({len(bad)} since the last read{f', {run} in a row' if run else ''}); "
                                     f"training goes on. {t.nonfinite_patience} in a row {then}"))
    patience = skip_patience(trainer)
    spikes, spike_esc = count_streak(state, "spike", flags, spans, base, patience, losses)
    if spikes and spike_esc is None:
        first = first_step(spikes[0])
        run = state.get("skip_run", 0)
        smooth, above = state.get("smooth"), getattr(trainer, "skip_value", math.inf)
        loss = losses[spikes[0]] if losses else math.nan
        times = f", {loss / smooth:.1f}x the smoothed {smooth:.3g}" if smooth else ""
        trainer.events.emit(ev.Alert(
            step=first, skipped=len(spikes), kind="spike", severity="warning",
            suggest="rollback", loss=loss, threshold=above,
            message=f"the loss jumped to {loss:.3g} at step {first}{times} (over the skip threshold "
            f"{above:.3g}): the step was skipped ({len(spikes)} since the last read"
            f"{f', {run} in a row' if run else ''}); training goes on. {patience} in a row {then}"))
    return escalation or spike_esc


def skip_on_host(trainer: Recoverable, row: list[bool], span: list[int], loss: Any) -> None:
    """A bad step of an optimizer without a device skip (one sync a step): the weights stay as they were,
    fp16's scaler is kept in step, and the step counts toward the streaks like the device flags."""
    scaler, optimizer = trainer.accelerator.scaler, trainer.optimizer
    nonfinite = row[0] or row[1]
    if scaler is not None:
        if nonfinite:
            optimizer.step()  # fp16: the scaler skips it and halves its scale (else unscale_ fails next)
        else:
            scaler.update()  # a finite spike: no step, but end clip's unscale_ so the next one works
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and nonfinite and not row[0]:
        check_scale(trainer)  # an overflow is loss scaling's routine, unless the scale collapses
        return
    escalation = on_flags(trainer, [row], [span], trainer.step, [float(loss)])
    if escalation is not None:
        escalate(trainer, escalation)


def after_log(trainer: Recoverable, first_step: int, start: tuple[int, int] | None) -> Escalation | None:
    """After a metrics event: a spike streak of `spike_patience` intervals escalates; fp16's scale is checked."""
    s = trainer.watchdogs.state
    run = s.get("spike_run", 0)
    if not run:
        s["spike_from"] = None
    elif run == 1 or not s.get("spike_from"):
        s["spike_from"] = {"step": first_step, "at": list(start or (trainer.epoch, trainer.position))}
    check_scale(trainer)
    if run < trainer.spec.train.spike_patience:
        return None
    begin = s["spike_from"]
    s["spike_run"], s["spike_from"] = 0, None
    return Escalation("spike", begin["step"], tuple(begin["at"]), (trainer.epoch, trainer.position),
                      f"the loss stayed above {trainer.watchdogs.spike_factor:g}x its smoothed value for {run} "
                      f"logging intervals in a row since step {begin['step']}")


def check_scale(trainer: Recoverable) -> None:
    """Read fp16's loss scale (one sync: at log time, and on an overflow step, which syncs anyway) and warn."""
    scaler = trainer.accelerator.scaler
    if scaler is None:
        return
    alert = ScaleMonitor(trainer.watchdogs.state.setdefault("scale", {})).on_scale(trainer.step,
                                                                                   float(scaler.get_scale()))
    if alert is not None:
        trainer.events.emit(ev.Alert(step=trainer.step, **alert.fields()))


def escalate(trainer: Recoverable, esc: Escalation) -> str:
    """Pause with a rollback offer, or (auto_rollback, attempts left) arrange a rollback before the next step.
    Returns "pause" or "rollback"."""
    t, s = trainer.spec.train, trainer.watchdogs.state
    if s.get("rollback_at") is not None and trainer.step - s["rollback_at"] >= RECOVERED_STEPS:
        s["rollbacks"], s["rollback_at"] = 0, None
    used = s.get("rollbacks", 0)
    extra = {"skipped": esc.skipped} if esc.skipped else {}
    if t.auto_rollback and used < t.auto_rollback_max:
        trainer.rollback_due = esc
        trainer.events.emit(ev.Alert(
            step=esc.step, kind=esc.cause, severity="warning", suggest="set_lr", **extra,
            message=f"{esc.detail}: rolling back automatically (attempt {used + 1} of "
            f"{t.auto_rollback_max}) with the learning rate x{LR_FACTOR:g}, skipping that data"))
        return "rollback"
    level = esc.level if esc.level is not None else trainer.last.get("train/loss")
    if esc.cause == "spike" and level is not None:
        trainer.watchdogs.accept_level(level)  # resuming after a look accepts the new level
        trainer.arm_skip()  # the skip threshold waits for a fresh spread, or the next steps skip again
    why = f" (auto-rollback already tried {used} times)" if t.auto_rollback else ""
    message = (f"{esc.detail}: paused{why}. Roll back to a checkpoint before step {esc.step}, perhaps with a "
               "lower learning rate, or resume to go on")
    trainer.events.emit(ev.Alert(step=esc.step, kind=esc.cause, severity="error", suggest="rollback", **extra,
                                 message=message))
    trainer.set_paused(True)  # the alert says why
    return "pause"


def auto_rollback(trainer: Recoverable, esc: Escalation) -> None:
    """Roll back to the newest valid checkpoint before `esc.step`, halve the LR, skip the data it covered."""
    from engine.checkpoints import store as checkpoint

    target = None
    if trainer.writes_files:  # rank 0 chooses (and verifies) once; every rank loads that one
        before = [c for c in checkpoint.lineage(trainer.run) if c.step < esc.step]
        target = next((c for c in before if checkpoint.verify(c.path, full=True) is None), None)
    name = trainer.agree(target.name if target else "")
    if name and target is None:
        target = next(c for c in checkpoint.list_checkpoints(trainer.run, include_invalid=True) if c.name == name)
    if target is None:
        message = (f"{esc.detail}: no valid checkpoint before step {esc.step} to roll back to: paused. Lower the "
                   "learning rate and resume, or start again with a lower one")
        trainer.events.emit(ev.Alert(step=trainer.step, kind="rollback", severity="error", suggest="set_lr",
                                     message=message))
        trainer.set_paused(True)  # the alert says why
        return
    s = trainer.schedule
    multiplier = s.multiplier * LR_FACTOR  # from the LR that was in force when it went wrong
    used = trainer.watchdogs.state.get("rollbacks", 0)
    trainer.rollback(target)  # the checkpoint's weights, optimizer, schedule, data position and watchdogs
    s.multiplier, s.rescue_until, s.rescue_restore = multiplier, None, None  # like set_lr: ends a rescue
    state = trainer.watchdogs.state
    state["rollbacks"], state["rollback_at"] = used + 1, esc.step
    loaded = (trainer.epoch, trainer.position)
    if tuple(esc.end) > loaded:
        trainer.epoch, trainer.position = esc.end
    lr = s.lrs(trainer.step)[0]
    trainer.events.emit(ev.Alert(
        step=trainer.step, kind="rollback", severity="warning", suggest="set_lr",
        checkpoint=target.name, branch=trainer.branch, multiplier=multiplier,
        skipped_from=list(loaded), skipped_to=[trainer.epoch, trainer.position],
        message=f"auto-rollback {used + 1} of {trainer.spec.train.auto_rollback_max}: back to "
        f"{target.name} (branch {trainer.branch}), learning rate x{LR_FACTOR:g} to {lr:.3g}, data "
        f"from block {loaded[1]} of epoch {loaded[0]} to block {trainer.position} of epoch "
        f"{trainer.epoch} skipped"))


@dataclass
class ScaleMonitor:
    """fp16 loss-scale watch on readings taken at log time: warns once when the scale is below `floor` or
    has been halved `max_backoffs` times from its peak within `window` steps; again after it recovers."""
    state: dict[str, Any] = field(default_factory=dict)
    floor: float = 1.0
    max_backoffs: int = 8
    window: int = 1000

    def on_scale(self, step: int, scale: float) -> Alert | None:
        s = self.state
        readings = [r for r in s.get("readings", []) if r[0] >= step - self.window] + [[step, scale]]
        s["readings"] = readings[-64:]
        peak = max(r[1] for r in readings)
        backoffs = math.inf if scale <= 0 else round(math.log2(peak / scale))
        collapsing = scale < self.floor or backoffs >= self.max_backoffs
        if not collapsing:
            s["warned"] = False
            return None
        if s.get("warned"):
            return None
        s["warned"] = True
        return Alert("fp16_scale", f"the fp16 loss scale fell to {scale:.3g} at step {step} (halved {backoffs} "
                     f"times since {peak:.3g} in the last {self.window} steps): gradients keep overflowing fp16. "
                     "Lower the learning rate, or train in bf16 if the GPU supports it", "set_lr")
