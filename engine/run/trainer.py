"""The training loop every technique shares: accelerate, LR schedule, controls, checkpoints, events.

One optimizer step = `grad_accum` micro-batches, then clip, a non-finite check and the step. Between
two steps (never mid-accumulation) the loop reads commands, honours pause/stop and signals, logs,
evaluates and saves. Nothing is read back from the device between logging intervals: the non-finite
guard skips a bad step on the device and is read at the next log, checkpoint or evaluation
(engine/run/step_guard.py), so a NaN never reaches the weights or a checkpoint. Saving and loading state
(checkpoints, resume, rollback, final/) live in engine/run/checkpointing.py, the interval's numbers in
engine/run/meter.py; what differs on several processes is asked of `self.ranks` (engine/run/ranks.py).

Exit codes: 0 done or stopped by command, 2 bad input, 3 out of memory, 11 stopped by a signal
(state saved), 1 anything else (traceback in job.log and an error event).
"""

from __future__ import annotations

import math
import os
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from engine import track
from engine.checkpoints import guards as save_guard
from engine.checkpoints import store as checkpoint
from engine.errors import UserError
from engine.machine import flops
from engine.processes import pid_start_time
from engine.run import batch_finder, controls, evaluation, hub_fetch, step_guard
from engine.run import escalation as numerics
from engine.run.checkpointing import CheckpointSteps
from engine.run.meter import Interval, Meter, memory_metrics, val_loss
from engine.run.ranks import OneProcess
from engine.run.train_state import build_optimizer, seed_all, to_weight_dtype
from engine.run.watchdogs import Watchdogs, injected, is_oom, oom_alert
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.runfolder.redact import redact
from engine.spec import RunSpec
from engine.techniques.base import Prepared, SetupContext, get

EXIT_SIGNAL, EXIT_OOM = 11, 3


class Trainer(CheckpointSteps):
    writes_files = True  # False on ranks other than 0 of a multi-process run (engine/run/distributed/trainer.py)
    ranks: OneProcess = OneProcess()  # what differs on several processes (engine/run/ranks.py)

    def __init__(self, run: Path, spec: RunSpec, *, resume: bool = False, step_sleep: float = 0.0,
                 echo: Any = None, commands_from: int | None = None) -> None:
        self.run, self.spec, self.resume, self.step_sleep = Path(run), spec, resume, step_sleep
        self.events = runfolder.EventLog(self.run, echo)
        self.commands = controls.CommandInbox(  # each command id runs once (L5); foreign-owned files ignored (S8)
            self.run, commands_from, alert=lambda message: self.events.emit(ev.Alert(
                step=self.step, kind="commands", message=message, severity="error")))
        self.in_save = False  # a save waits for disk space: controls refuse save/rollback/rescue (L7)
        self.step = self.epoch = self.position = self.tokens = 0
        self.branch, self.parent = 0, None
        self.paused, self.stop_reason = False, None
        self.state, self.message = "starting", ""
        self.started = time.time()
        self.last: dict[str, Any] = {}
        self.batch_size, self.grad_accum = spec.train.batch_size, spec.train.grad_accum
        self.batch_choice: dict[str, Any] | None = None  # the preflight batch finder's, kept in checkpoints
        self._last_status = 0.0
        self._longest_beat = 0.0  # the longest gap between status writes so far: readers scale "stalled" by it
        self.tries = 0  # optimizer-step attempts of this process (LLMW_FAULT's <kind>@try:k)
        self.rollback_due: numerics.Escalation | None = None  # an automatic rollback, done before the next step
        self.skip_above: Any = None  # device scalar: a step whose loss is above it is skipped (step_guard)
        self.skip_value = math.inf  # its value, as the host last set it
        self.looping = False  # preparation is over: a signal is handled at the next boundary
        self.best_eval = evaluation.BestEval()  # the lowest eval loss so far (kept in checkpoints)
        self.eval_step: int | None = None  # the step of the newest evaluation
        self.early_stop: str | None = None  # eval.patience ran out: why (the loop ends as done)

    # ---- status and events -------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Safe to call from a signal handler: sets a flag that the loop reads at the next boundary."""
        self.stop_reason = self.stop_reason or reason

    def write_status(self, **extra: Any) -> None:
        now = time.monotonic()
        if self._last_status:
            self._longest_beat = max(self._longest_beat, now - self._last_status)
        self._last_status = now
        try:
            self._write_status(**extra)
            self.status_blocked = None
        except OSError as e:  # RELIABILITY C13: rewritten whole by the next write; the next boundary pauses
            self.status_blocked = save_guard.storage_error(e, self.run)
            if self.status_blocked is None:
                raise

    def _write_status(self, **extra: Any) -> None:
        runfolder.write_status(self.run, {
            "state": self.state, "pid": os.getpid(), "pid_start": pid_start_time(os.getpid()),
            "technique": self.spec.technique, "started": self.started, "step": self.step,
            "total_steps": getattr(self, "total_steps", None), "branch": self.branch, "message": self.message,
            "lr": self.last.get("train/lr"), "loss": self.last.get("train/loss"),
            "eval_loss": self.last.get("eval/loss"), "epoch": self.epoch_share(), "micro_batch": self.batch_size,
            "grad_accum": self.grad_accum, "beat_s": round(self._longest_beat, 1), **extra})

    def set_state(self, state: str, message: str = "", **fields: Any) -> None:
        self.state, self.message = state, message
        self.events.emit(ev.State(state=state, step=self.step, message=message, **fields))
        self.write_status()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.set_state("paused" if paused else "running", f"{'paused' if paused else 'resumed'} at step {self.step}")

    def epoch_share(self) -> float:
        n = getattr(getattr(self, "prep", None), "data", None)
        return self.epoch + self.position / n.n_train_blocks if n is not None else 0.0

    # ---- the run ------------------------------------------------------------------------------

    def run_job(self) -> int:
        from engine.data.token_cache import PreparationStopped
        from engine.hub.download import DownloadStopped

        try:
            if self.writes_files:  # trackers and notifications follow the events off the loop's thread
                track.attach(self.events, self.run, self.spec)
            self.write_status()
            self.set_state("starting", "preparing data and model")
            self._prepare()
            if self.resume:
                self._resume()
            self.set_state("running", f"training {self.total_steps} steps")
            return self._loop()
        except UserError as e:
            return self._fail(str(e), "user", e.exit_code)
        except (PreparationStopped, DownloadStopped):
            self.set_state("stopped", f"stopped during preparation ({self.stop_reason})")
            self.events.emit(ev.Done(state="stopped", step=self.step))
            return EXIT_SIGNAL
        except Exception as e:  # noqa: BLE001 - the job must always leave a final state behind
            traceback.print_exc()
            if is_oom(e):
                alert = oom_alert(self.batch_size, self.grad_accum, backed_off=False)
                self.events.emit(ev.Alert(step=self.step, **alert.fields()))
                return self._fail(alert.message, "oom", EXIT_OOM)
            last = checkpoint.lineage(self.run)
            where = f"; last checkpoint {last[0].name} (resume from it)" if last else "; no checkpoint yet"
            return self._fail(f"{type(e).__name__}: {e}{where}", "internal", 1,
                              traceback=traceback.format_exc(limit=8)[-4000:])
        finally:
            self.events.close()

    def _fail(self, message: str, kind: str, code: int, **extra: Any) -> int:
        message = redact(message)  # an error quoting a URL or header must not carry a token into the run folder
        extra = {k: redact(v) if isinstance(v, str) else v for k, v in extra.items()}
        self.events.emit(ev.Error(message=message, kind=kind, step=self.step, **extra))
        self.set_state("failed", message)
        self.events.emit(ev.Done(state="failed", step=self.step, exit_code=code))
        return code

    def _prepare(self) -> None:
        import torch

        t = self.spec.train
        if t.threads:
            torch.set_num_threads(t.threads)
        seed_all(self.spec.seed)
        if t.precision == "fp16" and not torch.cuda.is_available():
            raise UserError("train.precision: fp16 needs a GPU; use bf16, bf16-pure or fp32 on the CPU",
                            field="train.precision")
        # Hub ids arrive before anything loads, pinned to the commit resolved at launch (engine/run/hub_fetch.py)
        hub_fetch.fetch(self.run, self.spec, self.events.emit if self.writes_files else lambda e: None,
                        lambda message, download: self._progress(message, download=download),
                        should_stop=lambda: bool(self.stop_reason))
        hub_fetch.fetch_run_data(self.run, self.spec, self.events.emit if self.writes_files else lambda e: None,
                                 lambda message, download: self._progress(message, download=download),
                                 should_stop=lambda: bool(self.stop_reason))
        self.technique = batch_finder.with_fault_allocator(get(self.spec.technique), t.seq_len)  # LLMW_FAULT=oom_over
        ctx = SetupContext(self.spec, self.run, progress=self._progress, should_stop=lambda: bool(self.stop_reason))
        self.prep: Prepared = self.technique.setup(ctx)
        n_train = self.prep.data.n_train_blocks
        to_weight_dtype(self.prep.model, t.precision)  # bf16-pure: bf16 parameters, so bf16 gradients and states
        # Counted before accelerate.prepare: DeepSpeed flattens and partitions the parameters it is handed.
        total, trainable = self.prep.n_params()
        self.meter = Meter(flops.flops_per_token(self.prep.model, t.seq_len), flops.device_peak(),
                           self.spec.log.every, self.ranks.world)
        self.accelerator = self.ranks.make_accelerator(self.spec, self.batch_size, self.grad_accum)
        optimizer = build_optimizer(self.prep.param_groups, t)
        self.model, self.optimizer = self.accelerator.prepare(self.prep.model, optimizer)
        if t.compile:
            self.model = torch.compile(self.model)  # techniques unwrap `_orig_mod` to save weights
        self.prep.model = self.model
        self.params = [p for g in self.prep.param_groups for p in g["params"]]
        self.device_guard = step_guard.skips_on_device(self.optimizer, self.accelerator.scaler)
        steps_per_epoch = n_train // (self.batch_size * self.grad_accum * self.ranks.world) or 1
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        self.schedule = controls.LRSchedule([t.lr for _ in self.optimizer.param_groups], self.total_steps,
                                            t.warmup_steps, t.schedule, t.min_lr_ratio)
        self.watchdogs = Watchdogs(self.total_steps, t.warmup_steps)
        self.skip_above = torch.full((), math.inf, device=self.accelerator.device)
        if self.writes_files:
            self._save_model_folder()
        self.events.emit(ev.State(state="starting", step=0, message="model ready", params=total,
                         trainable_params=trainable, total_steps=self.total_steps,
                         train_blocks=n_train, val_blocks=self.prep.data.n_val_blocks,
                         tokens_per_step=t.seq_len * self.batch_size * self.grad_accum,
                         data=_data_summary(self.prep.data)))
        # RELIABILITY O1: the largest micro-batch that fits, same effective batch (a no-op unless wanted)
        self.batch_choice = batch_finder.preflight(self) or self.batch_choice

    def _progress(self, message: str, **extra: Any) -> None:
        self.message = message
        self.write_status(**extra)

    def _loop(self) -> int:
        import torch

        t = self.spec
        self.interval = Interval(loss=torch.zeros((), device=self.accelerator.device))
        self.looping = True
        while self.step < self.total_steps and not self.early_stop:
            self._boundary()
            if self.stop_reason:
                break
            if not self._train_step():
                continue
            log = self.step % t.log.every == 0 or self.step == self.total_steps
            evaluate = t.eval.every and self.step % t.eval.every == 0
            save = t.checkpoint.every and self.step % t.checkpoint.every == 0
            if (log or evaluate or save) and not self._settle_guard():
                continue  # steps were skipped: alerted and paused, the step count taken back
            if log:
                self._log_metrics()
            if evaluate:
                self._evaluate()
            if save:
                self.save_checkpoint(reason="interval")
            if time.monotonic() - self._last_status > 2.0:
                self.write_status()
        self._settle_guard()
        if self.stop_reason:
            self.set_state("stopping", f"saving at step {self.step} ({self.stop_reason})")
            if self.step > 0:
                self.save_checkpoint(reason=self.stop_reason)
            self.set_state("stopped", f"stopped at step {self.step} ({self.stop_reason}); resume with "
                           f"`llm-wizard train --resume {self.run.name}`")
            self.events.emit(ev.Done(state="stopped", step=self.step))
            return 0 if self.stop_reason == "stop command" else EXIT_SIGNAL
        if self.interval.steps:
            self._log_metrics()
        if t.eval.every and self.step % t.eval.every:
            self._evaluate()
        self.save_checkpoint(reason="end")
        final_from = self.restore_best()  # checkpoint.final = "best": its weights become final/
        final, summary = self._save_final()
        note = f"; {summary['summary']}" if summary.get("summary") else ""
        note += f"; {self.early_stop}" if self.early_stop else ""
        self.set_state("done", f"finished {self.step} steps{note}")
        best = checkpoint.best(self.run)
        self.events.emit(ev.Done(state="done", step=self.step, final=str(final), final_from=final_from,
                                 best=best and best.name, best_eval_loss=best and best.metrics.get("eval_loss"),
                                 early_stop=bool(self.early_stop) or None, **summary))
        return 0

    # ---- one optimizer step -------------------------------------------------------------------

    def arm_skip(self) -> None:
        """Set the device threshold of the spike skip from the detector (at a log or load: no sync, fill_)."""
        on = self.spec.train.spike_skip and self.skip_above is not None
        self.skip_value = self.watchdogs.skip_threshold(self.step) if on else math.inf
        if self.skip_above is not None:
            self.skip_above.fill_(self.skip_value)

    def agree(self, text: str) -> str:
        """Rank 0's choice, the same on every rank (escalation's automatic rollback target)."""
        return self.ranks.agree(text)

    def _next_batch(self) -> Any:
        """This process's micro-batch: rank r takes the r-th of each group of world-size micro-batches from the
        global position, which advances by world x batch (a checkpointed position means the same on any layout)."""
        data, rank = self.prep.data, self.ranks.rank
        at = data.advance(self.epoch, self.position, rank * self.batch_size) if rank else (self.epoch, self.position)
        batch = data.train_batch(at[0], at[1], self.batch_size)
        self.epoch, self.position = data.advance(self.epoch, self.position, self.ranks.world * self.batch_size)
        return batch.to(self.accelerator.device, non_blocking=True)

    def _train_step(self) -> bool:
        """One optimizer step; False if it was skipped (non-finite) or redone after an OOM back-off."""
        import torch

        if self.rollback_due is not None:  # decided at the last read (RELIABILITY N3/N4), done between steps
            escalation, self.rollback_due = self.rollback_due, None
            numerics.auto_rollback(self, escalation)
            return False
        self.tries += 1
        started, at = time.perf_counter(), (self.epoch, self.position)
        acc, faults = self.accelerator, bool(os.environ.get("LLMW_FAULT"))
        loss_sum = torch.zeros((), device=acc.device)
        try:
            for micro in range(self.grad_accum):
                batch = self._next_batch()
                sync = acc.no_sync(self.model) if micro < self.grad_accum - 1 else nullcontext()
                with sync, acc.autocast():
                    loss = self.technique.loss(self.prep, batch)
                    if faults:
                        loss = injected(loss, self.step + 1, self.tries)
                    acc.backward(loss / self.grad_accum)
                loss_sum += loss.detach() / self.grad_accum
            loss_sum = self.ranks.step_loss(loss_sum)
        except Exception as e:
            if not (is_oom(e) and self.spec.train.oom_backoff and self.batch_size > 1):
                raise
            batch_finder.back_off(self, at)
            return False
        lr = self.schedule.apply(self.optimizer, self.step)
        clip = self.spec.train.grad_clip or float("inf")
        grad_norm = acc.clip_grad_norm_(self.params, clip)
        flags = step_guard.nonfinite_flags(loss_sum, grad_norm, self.skip_above)
        bad = flags.any()
        iv = self.interval
        span = [*at, self.epoch, self.position]
        iv.start = iv.start or at
        if self.device_guard:  # skipped by the fused kernel; read at the next log (_settle_guard)
            step_guard.step_unless(self.optimizer, bad)
            iv.flags.append(flags)
            iv.losses.append(loss_sum)
            iv.spans.append(span)
        elif bool(bad):  # optimizers without a device skip: one sync a step
            numerics.skip_on_host(self, flags.tolist(), span, loss_sum)
            return False
        else:
            self.optimizer.step()
            if self.watchdogs.state.get("nonfinite_run") or self.watchdogs.state.get("skip_run"):
                numerics.on_flags(self, [[False, False, False]], [span], self.step)  # a good step ends a streak
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = self.batch_size * self.grad_accum * self.spec.train.seq_len * self.ranks.world  # all ranks' tokens
        self.tokens += tokens
        ok = ~bad
        iv.loss += torch.where(ok, loss_sum, 0.0)  # a skipped step adds nothing to the logged mean
        iv.loss_sq = iv.loss_sq + torch.where(ok, loss_sum * loss_sum, 0.0)
        iv.steps += 1
        iv.tokens += tokens
        iv.grad_norm = grad_norm if iv.grad_norm is None else torch.where(ok, grad_norm, iv.grad_norm)
        iv.lr = lr
        if self.step_sleep:
            time.sleep(self.step_sleep)
        iv.seconds += time.perf_counter() - started
        return True

    def _settle_guard(self) -> bool:
        """Read the device-side flags and losses (one sync); if steps were skipped (non-finite or a spike), take
        them off the count and alert; `train.nonfinite_patience` non-finite ones in a row, or spike_patience
        intervals' worth of skipped spikes (counted across reads), pause or roll back (engine/run/escalation.py).
        False when steps were skipped."""
        import torch

        iv = self.interval
        if not iv.flags:
            return True
        rows = torch.cat([torch.stack(iv.flags).float(), torch.stack(iv.losses).float()[:, None]], 1).cpu().tolist()
        flags, losses = [[bool(x) for x in r[:-1]] for r in rows], [r[-1] for r in rows]
        spans, iv.flags, iv.losses, iv.spans = iv.spans, [], [], []
        escalation = numerics.on_flags(self, flags, spans, self.step - len(flags), losses)
        bad = [i for i, f in enumerate(flags) if any(f)]
        if not bad:
            return True
        per_step = self.batch_size * self.grad_accum * self.spec.train.seq_len * self.ranks.world
        self.step -= len(bad)
        self.tokens -= len(bad) * per_step
        iv.steps -= len(bad)
        iv.tokens -= len(bad) * per_step
        if escalation is not None:
            if iv.steps:
                self._log_metrics()
            numerics.escalate(self, escalation)
        return False

    def _log_metrics(self) -> None:
        import torch

        iv = self.interval
        if not iv.steps:
            return
        iv.loss, iv.loss_sq = self.ranks.mean(iv.loss, iv.loss_sq)  # every rank logs at the same steps
        m, loss_sq = self.meter.read(iv, self.step)
        alerts = self.watchdogs.on_metrics(self.step, m["train/loss"], self.epoch_share(), loss_sq)
        self.arm_skip()
        m["train/loss_smooth"] = self.watchdogs.state["smooth"]
        technique_metrics = getattr(self.technique, "metrics", None)  # optional: e.g. MoE expert load
        if technique_metrics is not None:
            m.update(technique_metrics(self.prep))
        m.update(memory_metrics())
        self.events.emit(ev.Metrics.from_keys(step=self.step, epoch=round(self.epoch_share(), 5), tokens=self.tokens,
                         eta_s=round(self.meter.eta_s(self.total_steps - self.step), 1), branch=self.branch, **m), flush=False)
        for alert in alerts:
            self.events.emit(ev.Alert(step=self.step, **alert.fields()), flush=False)
        self.events.flush()
        self.last.update(m)
        self.interval = Interval(loss=torch.zeros((), device=self.accelerator.device))
        self.write_status()
        escalation = numerics.after_log(self, self.step - iv.steps + 1, iv.start)  # sustained spike, fp16 scale
        if escalation is not None:
            numerics.escalate(self, escalation)

    def _evaluate(self) -> None:
        if not self.prep.data.n_val_blocks:
            return
        self.model.eval()

        def shrunk(batch: int) -> None:  # RELIABILITY O4: an OOM in eval shrinks the eval batch only
            self.events.emit(ev.Alert(step=self.step, kind="oom", severity="warning", suggest="pause",
                             message=f"out of memory in evaluation: eval batch lowered to {batch} "
                             f"(training keeps micro-batch {self.batch_size})"))

        loss, self.eval_batch_size = val_loss(
            lambda batch: self.technique.loss(self.prep, batch), self.prep.data, self.accelerator,
            getattr(self, "eval_batch_size", self.batch_size), self.spec.eval.batches, lambda: bool(self.stop_reason),
            shrunk)
        self.model.train()
        if loss is None:
            return
        self.last["eval/loss"], self.eval_step = loss, self.step
        improved = self.best_eval.see(self.step, loss)
        self.events.emit(ev.Eval(step=self.step, eval_loss=loss, eval_ppl=math.exp(min(loss, 50)), best=improved,
                                 best_step=self.best_eval.step, since_best=self.best_eval.since,
                                 samples=evaluation.eval_samples(self)))
        for alert in self.watchdogs.on_eval(self.step, loss):
            self.events.emit(ev.Alert(step=self.step, **alert.fields()))
        evaluation.decide(self, improved)  # the best checkpoint, early stop

    # ---- controls -----------------------------------------------------------------------------

    def _boundary(self) -> None:
        """Between two optimizer steps: handle commands; while paused, keep handling them."""
        self._check_storage()  # a status or event the disk refused: paused here until it takes them (C13)
        self._handle_commands()
        while self.paused and not self.stop_reason:
            time.sleep(0.05)
            self._handle_commands()
            if time.monotonic() - self._last_status > 1.0:
                self.write_status()  # the heartbeat goes on while paused

    def _handle_commands(self) -> None:
        for cmd in self.commands.poll():
            if cmd.get("cmd") == "?":
                ack = {"ok": False, "message": f"not a command: {cmd.get('invalid')!r}"}
            else:
                ack = controls.handle(self, cmd)
            self.events.emit(ev.ControlAck(id=cmd.get("id"), cmd=cmd.get("cmd"), step=self.step, **ack))


def _data_summary(data: Any) -> dict[str, Any] | None:
    """The data report's numbers, for the "model ready" event (None for data that did not come through it)."""
    report = getattr(data, "report", None)
    return report.summary() if report is not None and hasattr(report, "summary") else None
