"""The sweep's driver: asks Optuna for trials, runs each as an ordinary detached run in the sweep folder, reports
its eval events as intermediate values, stops a pruned one through the run's own control channel, and tells the
study how each ended. `python -m engine.sweep.driver SWEEP` runs it detached (like a run's job: its own session,
output to sweep.log); `--foreground` runs it in the terminal.

Slots: one trial at a time per slot. With GPUs, one slot per GPU, each trial's process started with
CUDA_VISIBLE_DEVICES set to its GPU; on the CPU one slot unless asked otherwise.

Resume (a driver killed, or stopped): every trial still running in the study is looked at once, before anything
new is asked: a run still alive is followed again; a run that finished while no driver watched is told as it
ended; one stopped or killed with a checkpoint is resumed from it; one with nothing to resume from is failed and
marked not counted, and a new trial takes its place. Finished trials that count are never more than asked for.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from engine import spec as spec_mod
from engine.errors import UserError
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.runfolder import lock as locks
from engine.sweep import space, study as studies
from engine.sweep import state as sweep_state
from engine.sweep.state import BASE_SPEC, LOG, SweepState, TrialRecord

METRIC_KEYS = {"eval/loss": ("eval", "eval/loss"), "eval/ppl": ("eval", "eval/ppl"),
               "train/loss": ("metrics", "train/loss")}


@dataclass
class Active:
    """A trial whose run this driver follows."""
    number: int
    run: Path
    trial: Any  # optuna.Trial
    slot: int
    launched: float | None = None  # time.time() of this driver's launch of it (None: adopted)
    offset: int = 0
    points: list[tuple[int, float]] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    guard_alert: str | None = None  # the last error alert (a run's guard pauses after one)
    diverged: str | None = None  # paused by its guard (non-finite or spiking loss): why


class Driver:
    def __init__(self, folder: Path, *, echo: Callable[[str], None] | None = None, poll_s: float = 0.5) -> None:
        self.folder, self.echo, self.poll_s = Path(folder).resolve(), echo or (lambda line: None), poll_s
        st = sweep_state.read(self.folder)
        if st is None:
            raise UserError(f"{self.folder} is not a sweep folder (no readable sweep.json)", field="sweep")
        try:
            locks.acquire(self.folder)  # one driver a sweep: the kernel drops the flock however the driver dies
        except UserError:
            raise UserError(f"sweep {self.folder.name} is already being driven by process "
                            f"{locks.holder(self.folder) or st.pid}", field="sweep") from None
        self.base = spec_mod.load(self.folder / BASE_SPEC)
        self.params = tuple(space.parse(t) for t in st.space)
        self.st = sweep_state.write(self.folder, sweep_state.owned_by_me(st, os.getpid()))
        self.study = studies.open_study(self.folder, self.st, first_eval=self.base.eval.every or None)
        self.slots: list[str | None] = list(self.st.gpus) or [None] * max(1, self.st.parallel)
        self.active: dict[int, Active] = {}
        self.stop_reason: str | None = None

    # ---- bookkeeping ---------------------------------------------------------------------------

    def save(self, rec: TrialRecord | None = None, **changes: Any) -> None:
        st = self.st.with_record(rec) if rec is not None else self.st
        self.st = sweep_state.write(self.folder, replace(st, **changes))

    def say(self, line: str) -> None:
        self.echo(line)
        self.save(message=line)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def free_slot(self) -> int | None:
        used = {a.slot for a in self.active.values()}
        return next((i for i in range(len(self.slots)) if i not in used), None)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self.reconcile()
        while True:
            if self.stop_reason:
                return self.stop_all()
            while not self.stop_reason and (slot := self.free_slot()) is not None and \
                    len(self.st.counted()) + len(self.active) < self.st.trials:
                self.start_trial(slot)
            for a in list(self.active.values()):
                self.follow(a)
            if not self.active and len(self.st.counted()) >= self.st.trials:
                break
            time.sleep(self.poll_s)
        best = self.st.best()
        summary = (f"best trial {best.number}: {self.st.metric} {best.value:.4f} with "
                   f"{_params_text(best.params)}" if best else "no trial completed")
        self.save(state="done")
        self.say(f"sweep done: {len(self.st.counted())} trials; {summary}")
        return 0

    def reconcile(self) -> None:
        """Trials the study still holds as running, from an earlier driver: follow, tell, resume or fail each."""
        for number in studies.open_numbers(self.study):
            rec = self.st.record(number)
            run = self.folder / rec.run if rec and rec.run else None
            if run is None or not (run / runfolder.SPEC).is_file():
                self.finish(number, "fail", counted=False, message="the sweep stopped before its run started")
                continue
            status = runfolder.read_status(run)
            state = status.get("state")
            slot = self.free_slot()
            if state in runfolder.LIVE_STATES:  # never a second process on it: followed, even past the slots
                self.say(f"trial {number}: following its run again ({run.name}, {state})")
                self.adopt(rec, run, len(self.slots) + number if slot is None else slot)
            elif rec.prune_pending or state in ("done", "failed"):
                a = Active(number, run, studies.trial_handle(self.study, number), slot or 0)
                self.read_events(a)
                self.finish_run(a, state)
            else:
                self.resume_trial(rec, run, slot)

    def resume_trial(self, rec: TrialRecord, run: Path, slot: int | None) -> None:
        from engine.checkpoints import store as checkpoint

        if slot is None or checkpoint.find_resume(run) is None:
            self.finish(rec.number, "fail", counted=False,
                        message=f"interrupted with no checkpoint to resume from ({run.name})")
            return
        self.say(f"trial {rec.number}: resuming its run {run.name} from its last checkpoint")
        job.launch(run, resume=True, env=self.env(slot), step_sleep=self.st.step_sleep)
        self.adopt(rec, run, slot)

    def adopt(self, rec: TrialRecord, run: Path, slot: int) -> None:
        self.active[rec.number] = Active(rec.number, run, studies.trial_handle(self.study, rec.number), slot)
        self.save(replace(rec, state="running", gpu=self.slots[slot] if slot < len(self.slots) else rec.gpu))

    def env(self, slot: int) -> dict[str, str] | None:
        gpu = self.slots[slot]
        return {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None

    def start_trial(self, slot: int) -> None:
        trial = self.study.ask()
        rec = TrialRecord(number=trial.number)
        self.save(rec)  # the number is taken: a driver killed from here on finds it in reconcile()
        try:
            values = {p.key: p.suggest(trial) for p in self.params}
            rec = replace(rec, params=values)
            trial_spec = space.apply(self.base.to_dict(), {**values, "name": f"{self.base.name}-t{trial.number}"})
        except UserError as e:  # a combination the spec refuses: a failed trial, said, counted
            self.save(rec)
            self.finish(trial.number, "fail", message=str(e))
            return
        run_id = f"{runfolder.new_run_id(trial_spec.name)}"
        self.save(replace(rec, run=run_id))
        run = job.create(trial_spec, self.folder, run_id=run_id)
        job.launch(run, env=self.env(slot), step_sleep=self.st.step_sleep)
        self.say(f"trial {trial.number}: started {run_id} with {_params_text(values)}")
        self.active[trial.number] = Active(trial.number, run, trial, slot, launched=time.time())
        self.save(replace(self.st.record(trial.number), state="running", gpu=self.slots[slot]))

    def read_events(self, a: Active) -> bool:
        """Read the run's new events; report new metric points to the study. True if there were any."""
        kind, key = METRIC_KEYS[self.st.metric]
        evs, a.offset = runfolder.read_events(a.run, a.offset)
        for e in evs:
            if e["type"] == kind and isinstance(e.get(key), (int, float)):
                a.points.append((int(e["step"]), float(e[key])))
            if e["type"] == "metrics" and isinstance(e.get("train/step_ms"), (int, float)):
                a.step_ms.append(float(e["train/step_ms"]))
            if e["type"] == "alert" and e.get("severity") == "error":
                a.guard_alert = e.get("message") or e.get("kind")
            if e["type"] == "state":  # paused right after an error alert: the guard's pause, not a person's
                a.diverged = a.guard_alert if e.get("state") == "paused" else None
                a.guard_alert = a.guard_alert if e.get("state") == "paused" else None
        if not studies.report(a.trial, a.points):
            return False
        rec = self.st.record(a.number)
        finite = [v for _, v in a.points if math.isfinite(v)]
        self.save(replace(rec, best=min(finite) if finite else None))
        return True

    def follow(self, a: Active) -> None:
        """New metric points reported; prune if the pruner says so; tell the study when the run has ended."""
        new = self.read_events(a)
        rec = self.st.record(a.number)
        if new and self.st.pruner != "none" and not rec.prune_pending and a.trial.should_prune():
            step = a.points[-1][0]
            self.save(replace(rec, prune_pending=True, pruned_at=step))  # before the stop: a resume tells it
            runfolder.send_command(a.run, "stop")
            self.say(f"trial {a.number}: pruned at step {step} ({self.st.metric} {a.points[-1][1]:.4f})")
        status = runfolder.read_status(a.run)
        if a.diverged and not self.st.record(a.number).prune_pending and status.get("state") == "paused":
            # unattended, a paused trial would hold its slot for ever: it diverged, so it is pruned
            self.save(replace(self.st.record(a.number), prune_pending=True, pruned_at=status.get("step"),
                              message=f"diverged: {a.diverged}"))
            runfolder.send_command(a.run, "stop")
            self.say(f"trial {a.number}: pruned at step {status.get('step')}: its guard paused it ({a.diverged})")
        if status.get("state") not in runfolder.LIVE_STATES:
            self.read_events(a)
            self.finish_run(a, status.get("state"))

    def finish_run(self, a: Active, state: str | None) -> None:
        self.active.pop(a.number, None)
        rec = self.st.record(a.number)
        if a.step_ms:
            measured = sorted(a.step_ms)[len(a.step_ms) // 2]
            self.save(step_ms=measured if self.st.step_ms is None else min(self.st.step_ms, measured))
            if a.launched is not None and state == "done" and not rec.prune_pending:
                steps = runfolder.read_status(a.run).get("step") or 0
                start = max(0.0, time.time() - a.launched - steps * measured / 1000)
                self.save(start_s=start if self.st.start_s is None else min(self.st.start_s, start))
        if rec.prune_pending:
            self.finish(a.number, "pruned")
        elif state == "done" and a.points and math.isfinite(a.points[-1][1]):
            self.finish(a.number, "complete", value=a.points[-1][1])
        elif state == "done":
            self.finish(a.number, "fail", message=f"the run reported no finite {self.st.metric}")
        else:
            message = runfolder.read_status(a.run).get("message") or state or "ended"
            self.finish(a.number, "fail", message=f"run {state}: {message}")

    def finish(self, number: int, state: str, *, value: float | None = None, counted: bool = True,
               message: str = "") -> None:
        studies.tell(self.study, number, state, value)
        rec = self.st.record(number) or TrialRecord(number=number)
        self.save(replace(rec, state=state, value=value, counted=counted, prune_pending=False,
                          message=message or rec.message))
        if state != "pruned":
            end = f"{self.st.metric} {value:.4f}" if value is not None else message
            self.say(f"trial {number}: {state}{'' if counted else ' (not counted)'}: {end}")

    def stop_all(self) -> int:
        """Stop the runs (each saves a checkpoint), leave their trials open for a resume, and end as stopped."""
        self.say(f"stopping ({self.stop_reason}): {len(self.active)} running trial(s) save and stop")
        for a in self.active.values():
            runfolder.send_command(a.run, "stop")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and any(
                runfolder.read_status(a.run).get("state") in runfolder.LIVE_STATES for a in self.active.values()):
            time.sleep(self.poll_s)
        self.save(state="stopped")
        self.say(f"sweep stopped; resume with `llm-wizard sweep --resume {self.folder.name}`")
        return 0


def _params_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def launch(folder: Path) -> int:
    """Start the driver detached (its own session, output to sweep.log); returns its pid."""
    args = [sys.executable, "-m", "engine.sweep.driver", str(Path(folder).resolve())]
    return job.spawn_detached(args, log=Path(folder) / LOG, cwd=Path(folder)).pid


def wait_started(folder: Path, pid: int, timeout: float = 60.0) -> str | None:
    """None once the driver `pid` owns the sweep; else why it did not start (the end of sweep.log)."""
    from engine.processes import pid_alive

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = sweep_state.read(folder)
        if st is not None and st.pid == pid:
            return None
        if not pid_alive(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            tail = (Path(folder) / LOG).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            return " ".join(tail) or "the sweep's driver exited at once"
        time.sleep(0.1)
    return None  # slow to start (a loaded machine): it may still come up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.sweep.driver", description="drive one sweep")
    p.add_argument("sweep", type=Path)
    p.add_argument("--foreground", action="store_true")
    a = p.parse_args(argv)
    return drive(a.sweep, echo=lambda line: print(line, flush=True))


def drive(folder: Path, *, echo: Callable[[str], None] | None = None) -> int:
    """Run the sweep to its end in this process; SIGTERM or Ctrl-C stops it (resumable)."""
    try:
        driver = Driver(folder, echo=echo)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code

    def on_signal(signum: int, frame: Any) -> None:
        driver.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return driver.run()
    except Exception as e:  # noqa: BLE001 - the sweep must always leave a final state behind
        import traceback

        traceback.print_exc()
        driver.save(state="failed", message=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
