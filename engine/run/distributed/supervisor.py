"""The detached process of a multi-process run on one machine: it runs `accelerate launch` and reports.

`engine.run.job.launch` starts this module (instead of engine.run.job) when the spec has several processes, in
its own session with the same guarantees as a single-process job (no terminal, stdin from /dev/null,
output appended to job.log). Its pid is the run's pid in status.json: signalling it stops the run.

On machine 0 it holds the run folder's lock, writes the accelerate config (a free port on one machine),
and when the processes end without rank 0's `done` event it finds the rank that died in the elastic
agent's failure summary and writes the error event naming it, the failed status and `done`.
SIGTERM/SIGINT become a `stop` command (every rank saves and stops at the same boundary); a second one
makes the agent end the ranks. If this process is killed, the kernel sends SIGTERM to the agent.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.run.distributed import launch as launch_config

from engine.runfolder import lock as locks

from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.errors import UserError
from engine.processes import pid_start_time

# One entry of torch elastic's ChildFailedError summary ("rank : 1 (local_rank: 1)" then "exitcode : -9 (pid: N)").
EXIT_SIGNAL = 11  # stopped by a signal, state saved (as engine.run.trainer)
_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)")


@dataclass
class RankFailure:
    rank: int
    local_rank: int
    exitcode: int
    pid: int
    root_cause: bool

    def describe(self) -> str:
        how = f"killed by {signal.Signals(-self.exitcode).name}" if self.exitcode < 0 and \
            -self.exitcode in signal.Signals._value2member_map_ else f"exited with code {self.exitcode}"
        return f"rank {self.rank} (local rank {self.local_rank}, pid {self.pid}) {how}"


def parse_failures(log_text: str) -> list[RankFailure]:
    """The failed ranks in the agent's summary; the root cause (first observed failure) is marked."""
    root_at = log_text.rfind("Root Cause")
    out = []
    for m in _FAILURE.finditer(log_text):
        out.append(RankFailure(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)),
                               root_cause=root_at >= 0 and m.start() > root_at))
    return out


def first_failure(failures: list[RankFailure]) -> RankFailure | None:
    """The rank that ended the run: one killed by a signal (the others then fail on the broken connection,
    or get the agent's SIGTERM), else the agent's root cause, else any."""
    if not failures:
        return None
    killed = [f for f in failures if f.exitcode < 0 and f.exitcode != -signal.SIGTERM]  # SIGTERM: the agent's
    roots = [f for f in failures if f.root_cause]
    return (sorted(killed, key=lambda f: (not f.root_cause, f.rank)) or roots or failures)[0]


def _die_with_parent() -> None:
    """In the agent before exec: SIGTERM when this supervisor dies (Linux), so no rank outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.run.distributed.supervisor", description="run a multi-process job")
    p.add_argument("run", type=Path)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--foreground", action="store_true")
    p.add_argument("--machine-rank", type=int, default=None, help="this machine's index (default: the spec's)")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step (tests)")
    p.add_argument("--commands-from", type=int, default=None, help="byte offset in commands.jsonl to start at")
    a = p.parse_args(argv)
    return supervise(a.run, resume=a.resume, foreground=a.foreground, machine_rank=a.machine_rank,
                     step_sleep=a.step_sleep, commands_from=a.commands_from)


def supervise(run: Path, *, resume: bool = False, foreground: bool = False, machine_rank: int | None = None,
              step_sleep: float = 0.0, commands_from: int | None = None) -> int:
    from engine.checkpoints import guards as save_guard
    from engine import spec as spec_mod

    run = Path(run).resolve()
    try:
        spec = spec_mod.load(run / runfolder.SPEC)
        launch_config.check_supported(spec)
    except UserError as e:
        runfolder.EventLog(run).emit(ev.Error(message=str(e), kind="user"))
        runfolder.write_status(run, {"state": "failed", "pid": os.getpid(), "step": 0, "message": str(e)})
        return e.exit_code
    rank = spec.distributed.machine_rank if machine_rank is None else machine_rank
    main_machine = rank == 0
    if main_machine:
        try:
            locks.acquire(run)  # one owner per run folder, for the whole run
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return e.exit_code
        save_guard.clean_leftovers(run)
    if spec.distributed.num_machines == 1 or not (run / launch_config.CONFIG).exists():
        launch_config.write_config(run, spec)
    if commands_from is None:
        commands = run / runfolder.COMMANDS_FILE
        commands_from = commands.stat().st_size if commands.exists() else 0
    log = run / runfolder.LOG
    log_from = log.stat().st_size if log.exists() else 0
    events_from = ev.read(run).offset
    cmd = launch_config.accelerate_command(run, machine_rank=rank, resume=resume, commands_from=commands_from,
                                           step_sleep=step_sleep)
    env = {**os.environ, "LLM_WIZARD_SUPERVISOR_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
           **({"LLM_WIZARD_ECHO_EVENTS": "1"} if foreground else {})}
    # Its own session: a Ctrl-C or hang-up of a terminal reaches this process only, which turns it into a stop.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, cwd=str(run), start_new_session=True,
                            preexec_fn=_die_with_parent)
    signals: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signal.Signals(signum).name)
        if len(signals) == 1 and main_machine:
            runfolder.send_command(run, "stop", signal=signals[0])
        else:
            proc.send_signal(signal.SIGTERM)  # the agent ends every rank

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal if foreground else signal.SIG_IGN)
    code = proc.wait()
    if not main_machine:
        return code
    code = _finish(run, code, events_from, log_from)
    return EXIT_SIGNAL if code == 0 and signals and runfolder.read_status(run).get("state") == "stopped" else code


def _finish(run: Path, code: int, events_from: int, log_from: int) -> int:
    """After the agent ended: rank 0's own `done` stands; otherwise name the rank that died."""
    events = list(ev.read(run, events_from))
    done = [e for e in events if isinstance(e, ev.Done)]
    if done:
        return 0 if done[-1].state in ("done", "stopped") else (code or 1)
    try:
        with open(run / runfolder.LOG, "rb") as f:
            f.seek(log_from)
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    failure = first_failure(parse_failures(text))
    from engine.checkpoints import store as checkpoint

    usable = [c for c in checkpoint.lineage(run) if checkpoint.verify(c.path, full=False) is None]
    where = (f"last complete checkpoint {usable[0].name}: resume with `llm-wizard train --resume {run.name}`"
             if usable else "no checkpoint yet: start it again")
    what = failure.describe() if failure else f"the training processes ended with exit code {code}"
    message = f"{what}; the run ended ({where}; see {run / runfolder.LOG})"
    status = runfolder.read_status(run)
    step = status.get("step", 0)
    log = runfolder.EventLog(run)
    extra = {"rank": failure.rank, "exitcode": failure.exitcode} if failure else {}
    user_error = any(isinstance(e, ev.Error) and e.kind == "user" for e in events)
    if not user_error:  # bad input (the same on every rank) is rank 0's error event already
        log.emit(ev.Error(message=message, kind="rank", step=step, **extra))
    runfolder.write_status(run, {**status, "state": "failed", "pid": os.getpid(),
                                 "pid_start": pid_start_time(os.getpid()), "message": message})
    log.emit(ev.Done(state="failed", step=step, exit_code=code or 1))
    log.close()
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
