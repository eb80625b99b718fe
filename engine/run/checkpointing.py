"""How the trainer saves and loads its state: checkpoints (atomic, verified, never with a non-finite
tensor, pausing on a full disk), the trainer state a resume needs, resume and rollback, the model/ folder
(config and tokenizer) and final/, each written whole.

A mixin of engine/run/trainer.py's Trainer; engine/run/distributed/trainer.py overrides the weight writers for sharded runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.checkpoints import fingerprint
from engine.checkpoints import guards as save_guard
from engine.checkpoints import store as checkpoint
from engine.errors import UserError
from engine.run import escalation as numerics
from engine.run import held_log
from engine.run.meter import Interval
from engine.run.watchdogs import is_oom
from engine.run.train_state import rng_state, set_rng_state, versions
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder


RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0  # back-off of the retries while the disk refuses writes (C13)


def _alert_kind(why: str) -> str:
    return "disk_full" if why.startswith("disk full") else "storage"


class CheckpointSteps:
    """Trainer methods that write or read checkpoints and final/ (self is the Trainer)."""

    storage_alert: str | None = None  # the storage outage being waited out (C13), None when writes go through
    storage_delay = RETRY_FIRST_S
    paused_before_outage = False
    status_blocked: str | None = None  # why the newest status.json write failed (it is rewritten whole next time)

    def save_checkpoint(self, reason: str) -> checkpoint.CheckpointInfo | None:
        import torch

        self._settle_guard()  # skipped steps come off the count before it names a checkpoint
        name = checkpoint.name_for(self.step, self.branch)
        existing = self.run / checkpoint.CHECKPOINTS / name
        replace = False
        if existing.is_dir() and checkpoint.verify(existing, full=False) is None:
            # The interval save of this step may predate a control (set_lr, rescue) taken at the boundary
            # after it: then save again, or a resume would lose the user's learning rate.
            saved = json.loads((existing / "trainer_state.json").read_text()).get("schedule")
            if saved == json.loads(json.dumps(self.schedule.state_dict())):
                return checkpoint.CheckpointInfo(name, existing, self.step, self.branch, self.parent)
            replace = True

        bad = self._nonfinite_state()
        if bad:  # RELIABILITY C10: a checkpoint is a promise that resuming from it works
            message = (f"not saved at step {self.step}: {', '.join(bad)} not finite; roll back to an earlier "
                       "checkpoint, perhaps with a lower learning rate")
            self.events.emit(ev.Alert(step=self.step, kind="nan", message=message, suggest="rollback",
                                      severity="error"))
            if reason == "interval":
                self.set_paused(True)
                return None
            raise UserError(message, field="checkpoint")

        def write(folder: Path) -> None:
            self._write_weights(folder)
            torch.save(rng_state(), folder / "rng.pt")
            if self.accelerator.scaler is not None:
                torch.save(self.accelerator.scaler.state_dict(), folder / "scaler.pt")
            (folder / "trainer_state.json").write_text(json.dumps(self._trainer_state()))

        # the eval loss only of an evaluation at this very step: the best checkpoint is judged by its own weights
        evaluated = self.eval_step == self.step and self.eval_step is not None
        metrics = {"loss": self.last.get("train/loss"), "eval_loss": self.last.get("eval/loss") if evaluated else None}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        meta = {"metrics": metrics, "reason": reason, "spec_fingerprint": self.spec.fingerprint(),
                "data_fingerprint": self.prep.data_fingerprint, "technique": self.spec.technique,
                "versions": versions()}
        history = checkpoint.lineage(self.run)
        needed = save_guard.folder_bytes(history[0].path) if history else 0

        def ready() -> bool:  # a retry has a chance: writable, and room for the whole checkpoint
            return save_guard.folder_problem(self.run) is None and save_guard.room_problem(self.run, needed) is None

        if (room := save_guard.room_problem(self.run, needed)) is not None:  # RELIABILITY C5
            self._wait_for_space(room, "low_disk", ready)  # returns once ready(): room for it
        while True:
            try:
                info = checkpoint.save(self.run, self.step, self.branch, write, parent=self.parent, meta=meta,
                                       replace=replace)
                break
            except Exception as e:
                why = save_guard.disk_full(e, self.run, needed) or save_guard.storage_error(e, self.run)
                if why is None:
                    raise
                # RELIABILITY C4, C13: checkpoint.save removed its temporary folder; the previous one is intact
                self._wait_for_space(save_guard.describe_pause(why, history[0].name if history else None),
                                     _alert_kind(why), ready)
        self._storage_recovered()
        self.parent = info.name
        deleted = self._write_or_wait(lambda: checkpoint.rotate(self.run, self.spec.checkpoint.keep, self.branch))
        best = checkpoint.best(self.run) if "eval_loss" in metrics else None
        self.events.emit(ev.Checkpoint(step=self.step, name=info.name, branch=self.branch, path=str(info.path),
                                       reason=reason, deleted=deleted, eval_loss=metrics.get("eval_loss"),
                                       best=(best is not None and best.name == info.name) or None))
        return info

    def _nonfinite_state(self) -> list[str]:
        return save_guard.nonfinite_state(self.params, self.optimizer)

    def _write_weights(self, folder: Path) -> None:
        """Model and optimizer state into a checkpoint (engine/run/distributed/trainer.py writes sharded ones its own way)."""
        import torch

        self.technique.save(self.prep, folder, final=False)
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def _load_weights(self, folder: Path) -> None:
        import torch

        self.technique.load(self.prep, folder)
        device = self.accelerator.device
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))

    def _wait_for_space(self, message: str, kind: str, ready: Callable[[], bool] | None = None) -> None:
        """A save cannot be written: pause with `message` until `ready()` (then the caller retries) or a stop."""
        self._hold_on_storage(message, kind, ready or (lambda: True))

    def _write_or_wait(self, write: Callable[[], Any]) -> Any:
        """`write()`, waited out and retried (it must be repeatable) while the storage refuses it (C13)."""
        while True:
            try:
                result = write()
            except Exception as e:
                why = save_guard.storage_error(e, self.run) or save_guard.disk_full(e, self.run)
                if why is None:
                    raise
                self._wait_for_space(f"{why}; the write is retried by itself once the run folder takes it",
                                     _alert_kind(why), lambda: save_guard.folder_problem(self.run) is None)
                continue
            self._storage_recovered()
            return result

    def storage_blocked(self) -> str | None:
        """Why the status or the events could not be written last time (held in memory), or None."""
        return self.status_blocked or getattr(self.events, "blocked", None)  # ranks above 0 write no events

    def _check_storage(self) -> None:
        """At a step boundary: a status or event write the disk refused pauses the run until it takes them."""
        why = self.storage_blocked()
        if why is None:
            return
        self._wait_for_space(f"{why}: training is paused, its state held in memory; it goes on by itself once the "
                             "run folder takes writes again (free space, or make it writable)", _alert_kind(why))
        self._storage_recovered()

    def _hold_on_storage(self, message: str, kind: str, ready: Callable[[], bool]) -> None:
        """RELIABILITY C4, C5, C13: pause, saying why (alert, status, job.log: each held where the disk refuses
        it), and retry with back-off, at once on the user's resume, until the held status and events are
        written and `ready()`. Controls keep working (save, rollback and rescue are refused meanwhile); a stop
        or signal ends the run with the message (exit 2)."""
        if self.storage_alert is None:
            self.paused_before_outage, self.storage_delay = self.paused, RETRY_FIRST_S
        if self.storage_alert != message:
            self.storage_alert = message
            self.events.emit(ev.Alert(step=self.step, kind=kind, message=message, suggest="resume", severity="error"))
            held_log.notice(f"paused at step {self.step}: {message}")
        self.paused = True
        self.set_state("paused", message)
        self.in_save = True
        try:
            while not self.stop_reason:
                until = time.monotonic() + self.storage_delay
                while self.paused and time.monotonic() < until and not self.stop_reason:
                    time.sleep(0.05)
                    self._handle_commands()  # a resume means: try now
                self.paused = True
                self.storage_delay = min(self.storage_delay * 2, RETRY_MAX_S)
                self.events.flush()
                self.write_status()
                held_log.retry()
                if self.storage_blocked() is None and ready():
                    break
        finally:
            self.in_save = False
        if self.stop_reason:
            raise UserError(f"stopped: {message}", field="checkpoint")

    def _storage_recovered(self) -> None:
        """The disk takes writes again after an outage: continue (paused only if the user had paused before)."""
        if self.storage_alert is None:
            return
        self.storage_alert = None
        self.paused = self.paused_before_outage
        message = f"{'paused' if self.paused else 'resumed'} at step {self.step}: the run folder takes writes again"
        self.set_state("paused" if self.paused else "running", message)
        held_log.notice(message)

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position, "tokens": self.tokens,
                "branch": self.branch, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                "batch_choice": self.batch_choice,
                "schedule": self.schedule.state_dict(), "watchdogs": self.watchdogs.state,
                "best_eval": self.best_eval.state(),
                "spec_fingerprint": self.spec.fingerprint(), "data_fingerprint": self.prep.data_fingerprint,
                "fingerprint_parts": fingerprint.parts(self.spec, self.prep.data_fingerprint)}

    def _load(self, info: checkpoint.CheckpointInfo) -> None:
        import torch

        st = json.loads((info.path / "trainer_state.json").read_text())
        fingerprint.check(st.get("fingerprint_parts"), fingerprint.parts(self.spec, self.prep.data_fingerprint),
                          info.name, self.run, self.spec.technique)
        if st.get("spec_fingerprint") != self.spec.fingerprint():
            raise UserError(f"{info.name} was saved with a different model or data setup than this spec; "
                            "resume refuses to mix them (start a new run instead)", field="resume")
        if st.get("data_fingerprint") != self.prep.data_fingerprint:
            raise UserError(f"the data changed since {info.name} was saved; resume refuses to continue on "
                            "different data (start a new run instead)", field="data.path")
        self._load_weights(info.path)
        if self.accelerator.scaler is not None and (info.path / "scaler.pt").exists():
            self.accelerator.scaler.load_state_dict(torch.load(info.path / "scaler.pt", weights_only=True))
        self.optimizer.zero_grad(set_to_none=True)
        self.step, self.epoch, self.position, self.tokens = st["step"], st["epoch"], st["position"], st["tokens"]
        self.batch_size, self.grad_accum = st.get("batch_size", self.batch_size), st.get("grad_accum", self.grad_accum)
        self.batch_choice = st.get("batch_choice", self.batch_choice)
        self.schedule.load_state_dict(st["schedule"])
        self.watchdogs.state = st["watchdogs"]
        self.best_eval = type(self.best_eval).from_state(st.get("best_eval"))
        self.eval_step = None  # an evaluation of the branch left behind says nothing about these weights
        self.arm_skip()  # the threshold the checkpoint's detector knew
        set_rng_state(torch.load(info.path / "rng.pt", weights_only=True))
        self.parent = info.name

    def _resume(self) -> None:
        removed = checkpoint.clean_tmp(self.run)
        notes: list[str] = []
        refused: dict[str, str] = {}  # checkpoints whose files verified but did not load, and why
        while True:
            target = checkpoint.find_resume(self.run, log=notes.append, skip=lambda c: refused.get(c.name))
            if target is None:
                raise UserError(f"run {self.run.name} has no complete checkpoint to resume from"
                                + (f" ({'; '.join(notes)})" if notes else "")
                                + f"; start it again with `llm-wizard train {self.run / runfolder.SPEC}`",
                                field="resume")
            self.branch = checkpoint.read_branches(self.run)["active"]
            try:
                self._load(target)
                break
            except UserError:
                raise  # a different setup, not a damaged checkpoint: the one before it would be refused too
            except Exception as e:  # noqa: BLE001 - RELIABILITY C14: a file its loader refuses is damage too
                if is_oom(e):
                    raise
                refused[target.name] = f"cannot be loaded: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        newest = checkpoint.lineage(self.run)
        notes += fingerprint.version_changes(target.path, versions())  # RELIABILITY R9: warn, still load
        if newest and newest[0].name != target.name:
            # Damaged checkpoints were skipped: continue on a new branch so no name is ever reused.
            self.branch = checkpoint.start_branch(self.run, target.name)
        self.events.emit(ev.State(state="starting", step=self.step, resumed_from=target.name, branch=self.branch,
                         message=f"resumed from {target.name}" + (f" ({'; '.join(notes)})" if notes else ""),
                         cleaned=removed))

    def supersede_auto_rollback(self, info: checkpoint.CheckpointInfo) -> None:
        """A user's rollback or rescue between the read that decided an automatic rollback and the step that
        would do it wins: the automatic one is dropped (two in a row would throw away the user's target)."""
        pending, self.rollback_due = self.rollback_due, None
        if pending is not None:
            self.events.emit(ev.Alert(step=self.step, kind="rollback", severity="warning", suggest="set_lr",
                             dropped=pending.cause, message=f"the pending automatic rollback ({pending.detail}) "
                             f"was dropped: your rollback to {info.name} came first; the automatic one's learning "
                             f"rate x{numerics.LR_FACTOR:g} is not applied"))

    def rollback(self, info: checkpoint.CheckpointInfo) -> None:
        import torch

        self.supersede_auto_rollback(info)
        self._load(info)
        self.branch = checkpoint.start_branch(self.run, info.name)
        self.interval = Interval(loss=torch.zeros((), device=self.accelerator.device))
        self.events.emit(ev.State(state=self.state, step=self.step, rollback_to=info.name, branch=self.branch,
                         message=f"rolled back to {info.name} (branch {self.branch})"))
        self.write_status()

    def restore_best(self) -> str | None:
        """checkpoint.final = "best": load the best checkpoint's weights (by eval loss, on the active lineage) for
        final/; its name, or None when final/ takes the last weights."""
        if self.spec.checkpoint.final != "best":
            return None
        info = checkpoint.best(self.run)
        if info is None:
            self.events.emit(ev.Alert(step=self.step, kind="checkpoint", severity="warning", suggest=None,
                                      message="checkpoint.final = \"best\": no checkpoint has an eval loss; "
                                              "final/ holds the last weights"))
            return None
        if info.name != checkpoint.name_for(self.step, self.branch):
            self._load_weights(info.path)
        return info.name

    def _save_model_folder(self) -> None:
        """model/: the config and tokenizer, what `generate` needs besides a checkpoint (once, whole or not at
        all: a kill between the two writes left it half)."""
        import shutil

        model_dir = self.run / "model"
        model = self.prep.model
        # DeepSpeed's engine has a config of its own: the model's is the wrapped module's
        wrapped = getattr(model, "module", None) if self.ranks.is_deepspeed(self.accelerator) else model
        config = getattr(wrapped, "config", None)
        if config is None or model_dir.exists():
            return
        tmp = self.run / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        config.save_pretrained(tmp)
        self.prep.tokenizer.save_pretrained(tmp)
        os.rename(tmp, model_dir)

    def _save_final(self) -> tuple[Path, dict[str, Any]]:
        """final/ written whole or not at all; save() may return fields for the done event (LoRA's adapter size)."""
        import shutil

        final, tmp = self.run / "final", self.run / ".tmp-final"

        def write() -> dict[str, Any]:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            summary = self.technique.save(self.prep, tmp, final=True) or {}
            checkpoint.write_manifest(tmp, name="final", step=self.step)  # read back verified (RELIABILITY C14)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            return summary

        return final, self._write_or_wait(write)
