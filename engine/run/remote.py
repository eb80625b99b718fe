"""Following a hosted job: the job process's loop when the training runs on someone else's machines.

A hosted technique (engine/techniques/openai.py; base.py says what it provides) starts or finds its remote
job, and this loop follows it: every `poll_s` seconds it asks the technique for the job's state (the
technique emits the new remote events and metrics as run events), and writes status.json, so that the
dashboard, `attach`, `runs` and `status.json` show a hosted run like any other. It is the same detached job
process as a local run's (engine/run/job.py), so it survives a dropped SSH session.

Controls: `stop` cancels the remote job (the CLI asks first: the technique's STOP_QUESTION) and the loop goes
on until the service says it is cancelled; the commands the technique names in REFUSED (pause, lr, ...)
are refused with its reason. A signal (SIGTERM, SIGINT) stops the following, never the remote job: the run
ends as stopped, and `llm-wizard train --resume RUN` follows the same remote job again (its ids are in
remote.json, written by `remember` the moment the service returns them).

LLMW_REMOTE_POLL_S sets the polling interval (tests poll fast; the default asks the service every 10 s).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.processes import pid_start_time
from engine.run import controls
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.runfolder.redact import redact
from engine.runfolder.status import write_text_atomic
from engine.spec import RunSpec
from engine.techniques.base import RemoteStatus, get

REMOTE = "remote.json"  # the remote ids (files, job) and counts a restarted job needs; never a secret
POLL_ENV, DEFAULT_POLL_S = "LLMW_REMOTE_POLL_S", 10.0
COMMAND_POLL_S = 0.2  # commands are answered this fast while waiting for the next poll
EXIT_SIGNAL = 11  # as the trainer's: stopped by a signal, resumable
ENDED = ("done", "failed", "stopped")


def is_remote(technique: Any) -> bool:
    return hasattr(technique, "remote")


class Follower:
    """The job process of a hosted run: the technique's RemoteContext, and the loop that follows its job."""

    def __init__(self, run: Path, spec: RunSpec, *, echo: Any = None, commands_from: int | None = None,
                 poll_s: float | None = None) -> None:
        self.run, self.spec = Path(run), spec
        self.technique = get(spec.technique)
        self.events = runfolder.EventLog(self.run, echo)
        self.commands = controls.CommandInbox(self.run, commands_from, alert=lambda message: self.events.emit(
            ev.Alert(step=self.status.step, kind="commands", message=message, severity="error")))
        self.poll_s = poll_s if poll_s is not None else float(os.environ.get(POLL_ENV) or DEFAULT_POLL_S)
        self.status = RemoteStatus("starting", "starting")
        self.started = time.time()
        self.stop_reason: str | None = None  # a signal: stop following (the remote job goes on)
        self.cancelling = False  # a stop command: cancel the remote job, follow it until it says cancelled
        self.job: Any = None

    # ---- RemoteContext --------------------------------------------------------------------------------

    def emit(self, *events: ev.Event) -> None:
        """Written with one write(): a kill never leaves half of what belongs together."""
        for event in events:
            self.events.emit(event, flush=False)
        self.events.flush()

    def say(self, message: str) -> None:
        self.status = replace(self.status, message=message)
        self.write_status()

    def remember(self, **values: Any) -> None:
        write_text_atomic(self.run / REMOTE, json.dumps({**self.recall(), **values}, indent=1), fsync=True)

    def recall(self) -> dict[str, Any]:
        try:
            return json.loads((self.run / REMOTE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def should_stop(self) -> bool:
        self._commands()
        return self.stop_reason is not None or self.cancelling

    # ---- the job -------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """From a signal handler: the loop stops following at its next turn."""
        self.stop_reason = self.stop_reason or reason

    def write_status(self) -> None:
        s = self.status
        runfolder.write_status(self.run, {
            "state": s.state, "pid": os.getpid(), "pid_start": pid_start_time(os.getpid()),
            "technique": self.spec.technique, "started": self.started, "step": s.step, "total_steps": s.total_steps,
            "message": s.message, "loss": s.loss, "eval_loss": s.eval_loss, "epoch": s.epoch, "branch": 0})

    def run_job(self) -> int:
        from engine import track

        try:
            track.attach(self.events, self.run, self.spec)  # TensorBoard and notifications, as for a local run
            self.write_status()
            self.emit(ev.State(state="starting", step=0, message="starting the hosted job"))
            self.job = self.technique.remote(self)
            self.job.start()
            return self._loop()
        except UserError as e:
            return self._end(RemoteStatus("failed", str(e), step=self.status.step, error=str(e), error_kind="user"),
                             e.exit_code)
        except Exception as e:  # noqa: BLE001 - the job must always leave a final state behind
            print(redact(traceback.format_exc()), file=sys.stderr, flush=True)  # job.log: a service may echo the key
            message = f"{type(e).__name__}: {e}"
            return self._end(RemoteStatus("failed", message, step=self.status.step, error=message), 1,
                             traceback=traceback.format_exc(limit=8)[-4000:])
        finally:
            self.events.close()

    def _loop(self) -> int:
        while True:
            if self.stop_reason:
                what = self.recall().get("job_id")
                goes_on = (f"; OpenAI job {what} goes on remotely: `llm-wizard train --resume {self.run.name}` "
                           "follows it again") if what else ""
                return self._end(replace(self.status, state="stopped",
                                         message=f"stopped following ({self.stop_reason}){goes_on}"), EXIT_SIGNAL)
            status = self.job.poll()
            if status.state in ENDED:  # _end says it, once
                return self._end(status, 0 if status.state != "failed" else (2 if status.error_kind == "user" else 1))
            if status.state != self.status.state or status.total_steps != self.status.total_steps:
                self.emit(ev.State(state=status.state, step=status.step, message=status.message,
                                   total_steps=status.total_steps))
            self.status = status
            self.write_status()
            deadline = time.monotonic() + self.poll_s
            while time.monotonic() < deadline and not self.stop_reason:
                self._commands()
                time.sleep(min(COMMAND_POLL_S, self.poll_s))

    def _end(self, status: RemoteStatus, code: int, **extra: Any) -> int:
        if status.state == "failed":
            message = redact(status.error or status.message)  # an error quoting a header must not carry the key
            self.emit(ev.Error(message=message, kind=status.error_kind, step=status.step,
                               **{k: redact(v) for k, v in extra.items()}))
            status = replace(status, message=message)
        self.status = status
        self.emit(ev.State(state=status.state, step=status.step, message=status.message),
                  ev.Done(state=status.state, step=status.step, exit_code=code, final=status.final,
                          summary=status.summary))
        self.write_status()
        return code

    # ---- controls ------------------------------------------------------------------------------------

    def _commands(self) -> None:
        for cmd in self.commands.poll():
            ack = self._answer(cmd)
            cid = cmd.get("id")
            if isinstance(cid, str) and not ack.get("duplicate"):
                self.commands.answered[cid] = {"cmd": cmd.get("cmd"), "ok": ack["ok"], "step": self.status.step,
                                               "message": ack["message"]}
            self.emit(ev.ControlAck(id=cid, cmd=str(cmd.get("cmd")), step=self.status.step, **ack))

    def _answer(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name, cid = cmd.get("cmd"), cmd.get("id")
        first = cmd.get(controls.FIRST_ACK) or (self.commands.answered.get(cid) if isinstance(cid, str) else None)
        if first is not None:
            return {"ok": bool(first.get("ok")) and first.get("cmd") == name, "duplicate": True,
                    "message": f"already answered at step {first.get('step')}, not run again: {first.get('message')}"}
        if name == "?":
            return {"ok": False, "message": f"not a command: {cmd.get('invalid')!r}"}
        if name != "stop":
            reason = getattr(self.technique, "REFUSED", {}).get(name, f"{name} does not apply to a hosted run")
            return {"ok": False, "message": reason}
        if self.cancelling or self.stop_reason:
            return {"ok": True, "message": "already stopping"}
        if self.job is None or getattr(self.job, "job_id", None) is None:
            self.cancelling = True  # before the remote job exists: it is never created
            return {"ok": True, "message": "stopping before the hosted job is created: nothing is billed"}
        try:
            message = self.job.cancel()
        except Exception as e:  # noqa: BLE001 - refused or unreachable: said in the ack, the run goes on
            return {"ok": False, "message": redact(str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")}
        self.cancelling = True
        return {"ok": True, "message": message}
