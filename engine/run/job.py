"""The job process: one run, detached from the terminal that started it.

`launch()` starts `python -m engine.run.job RUN` in a new session (setsid: no controlling terminal, so a
hang-up of the SSH connection or an exit of the TUI never reaches it), with stdin from /dev/null and
stdout/stderr appended to job.log (a write to a dead terminal would kill a process that survived
the hang-up). No pipes connect it to anyone: readers follow the run folder.

In the job: SIGTERM and SIGINT ask the loop to save and exit at the next step boundary; SIGHUP is
ignored. `--foreground` runs the same loop attached to the terminal (Ctrl-C saves and exits) and
echoes events to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.run import held_log
from engine.run.distributed import launch as launch_config
from engine.run.process import echo, ignore_late_signals

from engine.runfolder import lock as locks

from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder

from engine.checkpoints import guards as save_guard

from engine.models import trust as security
from engine.errors import UserError
from engine.processes import pid_alive
from engine.spec import RunSpec, to_toml

EXIT_SECOND_SIGNAL = 130


def create(spec: RunSpec, runs_dir: Path, *, run_id: str | None = None) -> Path:
    """A new run folder holding the validated spec (nothing else yet); `run_id`: its name, picked beforehand."""
    return runfolder.create_run(runs_dir, spec.name, to_toml(spec), run_id=run_id)


def launch(run: Path, *, resume: bool = False, step_sleep: float = 0.0, env: dict[str, str] | None = None) -> int:
    """Start the detached job for `run`; returns its pid. The job writes status.json itself."""
    owner = locks.holder(run)
    if owner:  # RELIABILITY P6: checked here too, so the running job's status is never overwritten
        raise UserError(f"run {run.name} is already being trained by process {owner}; watch it with "
                        f"`llm-wizard attach {run.name}`", field="run")
    _check_writable(run)
    # Commands sent from now on are for this process, even those that arrive before it reads any.
    commands = run / runfolder.COMMANDS_FILE
    # Several processes: the supervisor runs `accelerate launch` (engine/run/distributed/supervisor.py), same arguments.
    args = [sys.executable, "-m", launch_config.job_module(run), str(run), "--commands-from",
            str(commands.stat().st_size if commands.exists() else 0)]
    if resume:
        args.append("--resume")
    if step_sleep:
        args += ["--step-sleep", str(step_sleep)]
    from engine.machine.logind import logout_risk

    if (risk := logout_risk()) is not None:  # RELIABILITY P9: a warning on the dashboard, not a refusal
        runfolder.EventLog(run).emit(ev.Alert(kind="logout", message=f"{risk.message}. {risk.fix}", suggest=None))
    proc = spawn_detached(args, log=run / runfolder.LOG, cwd=run, env=env)
    # Record the pid at once, so a reader never sees the previous process's pid (the job soon rewrites
    # the status with its start time; if it already has, leave its status alone). Another launch that won
    # the lock meanwhile owns the status: left alone too (this process exits, see wait_started).
    before = runfolder.read_status(run)
    if before.get("pid") != proc.pid and locks.holder(run) in (None, proc.pid):
        runfolder.write_status(run, {"state": "starting", "pid": proc.pid, "step": before.get("step", 0),
                                     "message": "launching"})
    return proc.pid


def _check_writable(run: Path) -> None:
    """RELIABILITY C13: a run folder that is full or read-only is refused before a job starts (its job.log could
    not even be opened), saying what to do, instead of a job that dies at once."""
    probe = run / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):  # a disk full after the create leaves an empty probe behind
            probe.unlink()
        raise UserError(f"run {run.name} cannot start: its folder {run} is not writable ({e.strerror}); free space "
                        f"or make it writable, then `llm-wizard train --resume {run.name}`", field="run") from None


def spawn_detached(args: list[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `args` in a new session with no terminal: stdin /dev/null, stdout and stderr appended to
    `log`. A hang-up or Ctrl-C of the starting terminal never reaches it, even if it installs its own
    SIGHUP or SIGINT handler (torchrun and accelerate launch do): the kernel only signals the
    terminal's session (RELIABILITY P1, P3, P10)."""
    with open(os.devnull, "rb") as devnull, open(log, "ab") as out:
        return subprocess.Popen(args, stdin=devnull, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, cwd=str(cwd), env={**os.environ, **(env or {})})


def wait_started(run: Path, pid: int, timeout: float = 600.0, on_message: Any = None) -> dict[str, Any]:
    """Wait until the job trains, or ends (bad input is found during preparation); returns the status."""
    deadline, last_msg = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = runfolder.read_status(run)
        if status.get("pid") == pid and status.get("state") in ("running", "paused"):
            return status
        if status.get("state") in ("failed", "done", "stopped"):
            return status
        if not pid_alive(pid):
            _reap(pid)
            if (owner := locks.holder(run)) not in (None, pid):  # it lost the lock to another launch
                raise UserError(f"run {run.name} is already being trained by process {owner}; watch it with "
                                f"`llm-wizard attach {run.name}`", field="run")
            status = runfolder.read_status(run)
            if status.get("state") in runfolder.LIVE_STATES:
                status["state"] = "crashed"
            return status
        if on_message and status.get("message") and status.get("message") != last_msg:
            last_msg = status["message"]
            on_message(last_msg)
        _reap(pid)
        time.sleep(0.1)
    return runfolder.read_status(run)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child: collect it so it does not linger as a zombie
    except ChildProcessError:
        pass


def last_error(run: Path) -> str | None:
    errors = [e for e in ev.last(run, 200) if isinstance(e, ev.Error)]  # from the end: any log size
    return errors[-1].message if errors else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.run.job", description="run one training job")
    p.add_argument("run", type=Path)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--foreground", action="store_true")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step (tests)")
    p.add_argument("--commands-from", type=int, default=None, help="byte offset in commands.jsonl to start at")
    a = p.parse_args(argv)
    return run_job(a.run, resume=a.resume, foreground=a.foreground, step_sleep=a.step_sleep,
                   commands_from=a.commands_from)


def run_job(run: Path, *, resume: bool = False, foreground: bool = False, step_sleep: float = 0.0,
            commands_from: int | None = None) -> int:
    from engine import spec as spec_mod
    from engine.run import remote
    from engine.techniques.base import get

    run = Path(run).resolve()
    if not foreground:  # RELIABILITY C13: job.log on a full or read-only disk holds, never raises
        held_log.install()
    try:
        locks.acquire(run)  # RELIABILITY P6: one owner per run folder, for this process's whole life
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)  # the owner's status and events stay untouched
        return e.exit_code
    save_guard.clean_leftovers(run)  # RELIABILITY C8: only now, as the sole owner
    try:
        spec = spec_mod.load(run / runfolder.SPEC)
        hosted = remote.is_remote(get(spec.technique))  # trained elsewhere: followed, no torch here
        if not hosted:
            security.check_torch()
    except UserError as e:
        runfolder.EventLog(run).emit(ev.Error(message=str(e), kind="user"))
        runfolder.write_status(run, {"state": "failed", "pid": os.getpid(), "step": 0, "message": str(e)})
        return e.exit_code
    trainer: Any  # the Trainer, or the Follower of a hosted run
    if hosted:
        trainer = remote.Follower(run, spec, echo=echo if foreground else None, commands_from=commands_from)
    else:
        from engine.run.trainer import Trainer

        trainer = Trainer(run, spec, resume=resume, step_sleep=step_sleep, echo=echo if foreground else None,
                          commands_from=commands_from)

    def on_signal(signum: int, frame: Any) -> None:
        if trainer.stop_reason:  # RELIABILITY G4: a second signal means now; saves are atomic, so disk stays valid
            os._exit(EXIT_SECOND_SIGNAL)
        trainer.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)  # RELIABILITY G6: a scheduler's warning before preemption (Slurm)
    if not foreground:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGHUP, on_signal)  # attached to a terminal: its hang-up means stop (saved)
    code = trainer.run_job()
    ignore_late_signals()
    return code


if __name__ == "__main__":
    sys.exit(main())
