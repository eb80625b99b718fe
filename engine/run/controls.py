"""Live controls: the learning-rate schedule with its user multiplier, and the commands that steer a run.

LR = base x schedule(step) x multiplier, assigned to every param group before every optimizer step
(nanochat's way). "Lower the LR" is then one number: it is logged, saved in checkpoints and restored
on resume, and no scheduler step can undo it (editing param groups directly would be undone).

Commands arrive through commands.jsonl (see runfolder) and are handled at optimizer-step boundaries by
`handle()`, which validates the arguments and acts through `Steerable`, the few things of the trainer a
command may touch (the trainer imports this module; this module names only that shape). Every command gets one
`control_ack` event carrying its id: {"id", "cmd", "ok", "step", "message"}.

The order commands run in (RELIABILITY L5, L7), whatever arrives together:
1. One at a time, in the order they were appended to commands.jsonl, only at an optimizer-step boundary:
   never inside a step, an evaluation or a save. Commands written while the job is busy wait in the file
   and all run, in order, at the next boundary; the sender holds their ids (queued, not lost).
2. Each id runs at most once (`CommandInbox`): a client that retries after a timeout sends the same id
   again and gets an ack with `duplicate: true` repeating the first outcome, also across a restart of the
   job. An id reused for another command is refused.
3. After a `stop` is accepted (or a signal asked to stop) every later command is refused: the run saves and
   ends at the step it is at. A stop while paused therefore saves the paused step.
4. While a save waits for disk space (the run is paused inside the save), `save`, `rollback` and `rescue`
   are refused; pause, resume, set_lr and stop run. A rollback sent during an ordinary save runs after it,
   at the next boundary: the save's checkpoint is whole, on the branch it was taken on.
5. pause, resume, set_lr and save never move the step; set_lr while paused sets the LR the first step after
   resume uses; save while paused saves the paused step and stays paused.
6. A rollback restores everything from its checkpoint, the LR multiplier included (a set_lr before it is
   replaced; its `lr_factor`, or a set_lr after it, applies on top), keeps the pause state and starts a new
   branch; two rollbacks in a row make two branches, the second from its own target.
Commands written while no job runs are never executed: `llm-wizard control` refuses them up front, and a
resumed job starts reading at the file's size when it was launched, so it never replays an old `stop`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import UserError
from engine.runfolder import events as ev
from engine.vocabulary import lr_problem
from engine.runfolder import folder as runfolder

if TYPE_CHECKING:
    from engine.checkpoints.store import CheckpointInfo
    from engine.run.watchdogs import Watchdogs

RESCUE_FACTOR = 0.1  # the book's "lower the learning rate a lot"
RESCUE_BACK = 100  # roll back to the checkpoint about this many steps before the plateau
RESCUE_STEPS = 200  # train this long at the lowered rate, then restore it
FIRST_ACK = "_first_ack"  # set by CommandInbox.poll on a command whose id an earlier job already answered
BLOCKED_IN_SAVE = ("save", "rollback", "rescue")  # these would re-enter or undo the save that is waiting


@dataclass
class LRSchedule:
    base_lrs: list[float]
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_ratio: float = 0.1
    multiplier: float = 1.0
    rescue_until: int | None = None  # step at which a rescue ends
    rescue_restore: float | None = None  # the multiplier to go back to then

    def factor(self, step: int) -> float:
        """The schedule's share of the peak LR for optimizer step `step` (0-based)."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape

    def lrs(self, step: int) -> list[float]:
        f = self.factor(step) * self.multiplier
        return [b * f for b in self.base_lrs]

    def apply(self, optimizer: Any, step: int) -> float:
        """Assign this step's LR to every param group (called before each optimizer step)."""
        if self.rescue_until is not None and step >= self.rescue_until:
            self.multiplier = self.rescue_restore if self.rescue_restore is not None else 1.0
            self.rescue_until = self.rescue_restore = None
        lrs = self.lrs(step)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        return lrs[0]

    def set_value(self, lr: float, step: int) -> None:
        """Make the next step's LR `lr` by choosing the multiplier; the schedule goes on from there."""
        if self.factor(step) <= 0:  # a schedule ending at 0 (min_lr_ratio = 0): no multiplier gives lr
            raise UserError(f"the schedule's LR is 0 at step {step}: set_lr can only multiply it here")
        self.multiplier = lr / (self.base_lrs[0] * self.factor(step))

    def problem(self) -> str | None:
        """Why the schedule's peak LR (base x multiplier; every step's LR is at most that) is out of
        vocabulary.LR_RANGE, with the range, or None."""
        return next(filter(None, (lr_problem(b * self.multiplier, "the peak learning rate")
                                  for b in self.base_lrs if b > 0)), None)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("multiplier", "rescue_until", "rescue_restore"):
            setattr(self, key, state.get(key, getattr(self, key)))


class Steerable(Protocol):
    """What the commands steer: engine.run.trainer.Trainer on one process or each rank of several."""
    run: Path
    step: int
    branch: int
    paused: bool
    stop_reason: str | None
    schedule: LRSchedule
    watchdogs: Watchdogs  # its state says where a plateau began (rescue)

    def set_paused(self, paused: bool) -> None: ...

    def request_stop(self, reason: str) -> None: ...

    def save_checkpoint(self, reason: str) -> CheckpointInfo | None: ...

    def rollback(self, info: CheckpointInfo) -> None: ...


def _number(cmd: dict[str, Any], key: str, default: float | None = None, *, positive: bool = True) -> float | None:
    value = cmd.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise UserError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _scaled(trainer: Steerable, factor: float | None, what: str) -> str:
    """Multiply the LR by `factor` after a rollback, unless that leaves LR_RANGE; "" or what was not done."""
    s = trainer.schedule
    if factor is None:
        return ""
    before, s.multiplier = s.multiplier, s.multiplier * factor
    if (why := s.problem()) is None:
        return ""
    s.multiplier = before
    return f"; {what} x{factor:g} not applied: {why}"


class CommandInbox(runfolder.CommandReader):
    """The job's command queue: commands.jsonl's new lines in file order, and the answers given by id, so
    that a command sent twice with one id (a client retrying after a timeout) runs once.

    Answers of this process are kept in `answered` by `handle()`. Answers of earlier processes of the run
    (a retry that arrives after a restart) are read from events.jsonl once, on the first command this
    process sees (nothing is read when no command ever comes), and attached to the command by `poll()`:
    with several processes only rank 0 polls and the commands it broadcasts carry them, so every rank
    decides alike.
    """

    def __init__(self, run: Path, from_offset: int | None = None, alert: Any = None) -> None:
        super().__init__(run, from_offset, alert=alert)
        self.answered: dict[str, dict[str, Any]] = {}
        self._earlier: dict[str, dict[str, Any]] | None = None

    def poll(self) -> list[dict[str, Any]]:
        cmds = super().poll()
        for cmd in cmds:
            cmd.pop(FIRST_ACK, None)  # only this reader sets it
            cid = cmd.get("id")
            if not isinstance(cid, str) or cid in self.answered:
                continue
            if self._earlier is None:
                self._earlier = earlier_answers(self.path.parent)
            if cid in self._earlier:
                cmd[FIRST_ACK] = self._earlier[cid]
        return cmds


def _answer(ack: dict[str, Any]) -> dict[str, Any]:
    return {k: ack.get(k) for k in ("cmd", "ok", "step", "message")}


def earlier_answers(run: Path) -> dict[str, dict[str, Any]]:
    """The first control_ack of every command id in events.jsonl (only lines that name control_ack are
    parsed: a long run's file is mostly metrics)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(Path(run) / runfolder.EVENTS, "rb") as f:
            for line in f:
                if b'"control_ack"' not in line:
                    continue
                try:
                    event = ev.parse(line)
                except ValueError:  # not an event (skipped by every reader)
                    continue
                if isinstance(event, ev.ControlAck) and event.id is not None and not event.duplicate \
                        and event.id not in out:
                    out[event.id] = _answer(event.to_dict())
    except FileNotFoundError:
        pass
    return out


def handle(trainer: Steerable, cmd: dict[str, Any]) -> dict[str, Any]:
    """One command, serialised as the module docstring says; returns the ack's fields (ok, message, extras)."""
    inbox = getattr(trainer, "commands", None)
    answered = inbox.answered if isinstance(inbox, CommandInbox) else None
    cid = cmd.get("id")
    first = cmd.get(FIRST_ACK) or (answered.get(cid) if answered is not None and isinstance(cid, str) else None)
    if first is not None:
        return _duplicate(cid, cmd.get("cmd"), first)
    ack = _refusal(trainer, cmd.get("cmd")) or _execute(trainer, cmd)
    if answered is not None and isinstance(cid, str):
        answered[cid] = _answer({**ack, "cmd": cmd.get("cmd"), "step": trainer.step})
    return ack


def _duplicate(cid: Any, name: Any, first: dict[str, Any]) -> dict[str, Any]:
    if first.get("cmd") != name:
        return {"ok": False, "duplicate": True, "message": f"command id {cid} was already used for "
                f"{first.get('cmd')!r}; {name!r} not run (send it with a new id)"}
    return {"ok": bool(first.get("ok")), "duplicate": True, "first_step": first.get("step"),
            "message": f"already answered at step {first.get('step')}, not run again: {first.get('message')}"}


def _refusal(trainer: Steerable, name: Any) -> dict[str, Any] | None:
    """Why a command cannot run now (rules 3 and 4 of the module docstring), or None."""
    if trainer.stop_reason:
        if name == "stop":
            return {"ok": True, "message": f"already stopping ({trainer.stop_reason})"}
        return {"ok": False, "message": f"the run is stopping ({trainer.stop_reason}); {name} not run"}
    if getattr(trainer, "in_save", False) and name in BLOCKED_IN_SAVE:
        return {"ok": False, "message": f"a checkpoint save is waiting for disk space; {name} not run: free "
                "space and `resume` (or `stop`) first"}
    return None


def _execute(trainer: Steerable, cmd: dict[str, Any]) -> dict[str, Any]:
    """Run one command against the trainer; returns the ack's fields (ok, message, extras)."""
    name = cmd.get("cmd")
    try:
        if name == "pause":
            if trainer.paused:
                return {"ok": True, "message": "already paused"}
            trainer.set_paused(True)
            return {"ok": True, "message": f"paused at step {trainer.step}"}
        if name == "resume":
            if not trainer.paused:
                return {"ok": True, "message": "not paused"}
            trainer.set_paused(False)
            return {"ok": True, "message": f"resumed at step {trainer.step}"}
        if name == "save":
            info = trainer.save_checkpoint(reason="requested")
            return {"ok": True, "message": f"saved {info.name}", "checkpoint": info.name}
        if name == "stop":
            trainer.request_stop("stop command")
            return {"ok": True, "message": "saving and stopping"}
        if name == "set_lr":
            s = trainer.schedule
            factor, value = _number(cmd, "factor"), _number(cmd, "value")
            if (factor is None) == (value is None):
                raise UserError("set_lr needs exactly one of factor or value")
            before = s.multiplier
            if value is not None:
                s.set_value(value, trainer.step)
            else:
                s.multiplier *= factor  # type: ignore[operator]
            if (why := s.problem()) is not None:  # a stale or hand-written command too
                s.multiplier = before
                raise UserError(f"{why}; the LR stays {s.lrs(trainer.step)[0]:.3g}")
            if s.rescue_until is not None:  # a manual change ends a rescue: the user's number wins
                s.rescue_until = s.rescue_restore = None
            lr = s.lrs(trainer.step)[0]
            return {"ok": True, "message": f"learning rate now {lr:.3g} (multiplier {s.multiplier:.3g})",
                    "lr": lr, "multiplier": s.multiplier}
        if name == "rollback":
            from engine.checkpoints import store as checkpoint

            ref = cmd.get("step", cmd.get("checkpoint"))
            if ref is None:
                raise UserError("rollback needs a step or checkpoint name")
            target = checkpoint.find(trainer.run, ref)
            factor = _number(cmd, "lr_factor")
            trainer.rollback(target)
            note = _scaled(trainer, factor, "lr_factor")
            return {"ok": True, "message": f"rolled back to {target.name}; now on branch {trainer.branch}{note}",
                    "checkpoint": target.name, "branch": trainer.branch, "multiplier": trainer.schedule.multiplier}
        if name == "rescue":
            from engine.checkpoints import store as checkpoint

            factor = _number(cmd, "factor", RESCUE_FACTOR)
            back = int(_number(cmd, "back", RESCUE_BACK, positive=False) or 0)
            steps = int(_number(cmd, "steps", RESCUE_STEPS) or RESCUE_STEPS)
            history = checkpoint.lineage(trainer.run)
            if not history:
                raise UserError("no checkpoint to roll back to yet: save one first")
            # Back from where the plateau began if the watchdog saw one, else from now.
            start = trainer.watchdogs.state.get("plateau_at") or trainer.step
            before = [c for c in history if c.step <= start - back]
            target = before[0] if before else history[-1]  # newest far enough back, else the oldest
            trainer.rollback(target)
            s = trainer.schedule
            restore, note = s.multiplier, _scaled(trainer, factor, "the rescue factor")
            if note:
                return {"ok": False, "message": f"rescue: back to {target.name}{note}", "checkpoint": target.name,
                        "branch": trainer.branch, "multiplier": s.multiplier}
            s.rescue_restore, s.rescue_until = restore, target.step + steps
            return {"ok": True, "message": f"rescue: back to {target.name}, learning rate x{factor:g} until step "
                    f"{s.rescue_until}, then restored", "checkpoint": target.name, "branch": trainer.branch,
                    "until": s.rescue_until, "multiplier": s.multiplier}
        raise UserError(f"unknown command {name!r}")
    except UserError as e:
        return {"ok": False, "message": str(e)}
