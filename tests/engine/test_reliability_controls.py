"""Live controls when commands meet a busy, dead or restarting job, or each other (RELIABILITY L5, L7).

In process: a tiny scratch run trained to step 10 (checkpoints 5 and 10) is copied for each test and
resumed in a Trainer that is driven boundary by boundary, so each test can write commands while a save is
in progress (the technique's save sends them) and assert the exact state after (step, LR, branch, pause).
The detached test at the end goes through job.launch: a stop written while no job runs is not replayed
by the resumed job, and a retried command id is answered once across the restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import spec

from engine.checkpoints import store as checkpoint

from engine.run import job

from engine import processes
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder

from engine.checkpoints import guards as save_guard
from engine.errors import UserError
from engine.run.trainer import Interval, Trainer
from run_helpers import control, in_process_trainer, make_corpus, tiny_spec, wait_exit, wait_step

BASE_STEPS, STEPS = 10, 40


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("controls")
    with in_process_trainer(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
        s = tiny_spec(make_corpus(tmp, lines=600), train={"max_steps": BASE_STEPS}, checkpoint={"every": 5, "keep": 10})
        run = job.create(s, tmp / "runs")
        assert Trainer(run, s).run_job() == 0
        yield run, spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": STEPS}})


def _resumed(base: tuple[Path, spec.RunSpec], tmp_path: Path) -> Trainer:
    """A copy of the base run resumed at step 10, ready for boundaries and steps (no loop running)."""
    import torch

    src, s = base
    run = tmp_path / src.name
    shutil.copytree(src, run)
    (run / runfolder.SPEC).write_text(spec.to_toml(s))
    t = Trainer(run, s, resume=True)
    t._prepare()
    t._resume()
    t.interval = Interval(loss=torch.zeros(()))
    assert t.step == BASE_STEPS
    return t


def _boundary(t: Trainer, *cmds: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Write `cmds`, run one boundary, return the acks it emitted (in order)."""
    offset = runfolder.read_events(t.run)[1]
    for name, args in cmds:
        runfolder.send_command(t.run, name, **args)
    t._handle_commands()
    return _acks(t.run, offset)


def _acks(run: Path, offset: int = 0) -> list[dict[str, Any]]:
    return [e for e in runfolder.read_events(run, offset)[0] if e["type"] == "control_ack"]


def _send_during_save(monkeypatch: pytest.MonkeyPatch, t: Trainer, *cmds: tuple[str, dict[str, Any]]) -> list[str]:
    """Make the next checkpoint write send `cmds` halfway (a client writing while the job is busy)."""
    ids: list[str] = []
    original = t.technique.save

    def save(prep: Any, folder: Path, *, final: bool = False) -> None:
        if not ids:
            ids.extend(runfolder.send_command(t.run, name, **args) for name, args in cmds)
        original(prep, folder, final=final)

    monkeypatch.setattr(t.technique, "save", save)
    return ids


def _multiplier(folder: Path) -> float:
    return json.loads((folder / "trainer_state.json").read_text())["schedule"]["multiplier"]


# ---- L5: busy, retried, restarted ---------------------------------------------------------------------

def test_L5_a_retried_command_id_runs_once_also_after_a_restart(base, tmp_path: Path) -> None:
    t = _resumed(base, tmp_path)
    acks = _boundary(t, ("set_lr", {"factor": 0.5, "cid": "retry-1"}), ("set_lr", {"factor": 0.5, "cid": "retry-1"}))
    acks += _boundary(t, ("set_lr", {"factor": 0.5, "cid": "retry-1"}), ("pause", {"cid": "retry-1"}))
    assert t.schedule.multiplier == 0.5 and not t.paused  # halved once; the reused id did not pause
    assert [a["id"] for a in acks] == ["retry-1"] * 4
    first, *repeats, reused = acks
    assert first["ok"] and "duplicate" not in first and first["multiplier"] == 0.5
    for a in repeats:
        assert a["ok"] and a["duplicate"] and a["first_step"] == BASE_STEPS and first["message"] in a["message"]
    assert reused["ok"] is False and reused["duplicate"] and "already used for 'set_lr'" in reused["message"]

    # a new job on the same folder (a restart): the retry is answered from events.jsonl, not run again
    t2 = Trainer(t.run, t.spec, resume=True)
    t2._prepare()
    t2._resume()
    assert t2.schedule.multiplier == 1.0  # the checkpoint of step 10 predates the set_lr
    (again,) = _boundary(t2, ("set_lr", {"factor": 0.5, "cid": "retry-1"}))
    assert again["duplicate"] and again["ok"] and t2.schedule.multiplier == 1.0
    (fresh,) = _boundary(t2, ("set_lr", {"factor": 0.5}))  # control: a new id does run
    assert fresh["ok"] and "duplicate" not in fresh and t2.schedule.multiplier == 0.5
    with pytest.raises(UserError, match="command id"):
        runfolder.send_command(t.run, "pause", cid="not an id!")


def test_L5_commands_sent_during_a_save_run_in_order_at_the_next_boundary(base, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    t = _resumed(base, tmp_path)
    assert t._train_step()
    ids = _send_during_save(monkeypatch, t, ("set_lr", {"value": 1e-3}), ("set_lr", {"factor": 0.5}), ("pause", {}))
    offset = runfolder.read_events(t.run)[1]
    info = t.save_checkpoint(reason="requested")
    assert len(ids) == 3 and _acks(t.run, offset) == []  # busy: nothing answered inside the save
    assert info.name == "step-000011" and checkpoint.verify(info.path) is None and _multiplier(info.path) == 1.0
    acks = _boundary(t)
    assert [(a["id"], a["cmd"], a["step"], a["ok"]) for a in acks] == [
        (ids[0], "set_lr", 11, True), (ids[1], "set_lr", 11, True), (ids[2], "pause", 11, True)]
    # in file order: value first, then halved (the other order would leave 1e-3)
    assert t.schedule.lrs(11)[0] == pytest.approx(5e-4, rel=1e-12) and t.paused and t.step == 11


# ---- L7: conflicting commands -------------------------------------------------------------------------

def test_L7_rollback_sent_during_a_save_runs_after_it(base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _resumed(base, tmp_path)
    assert t._train_step()
    ids = _send_during_save(monkeypatch, t, ("rollback", {"step": 5}))
    info = t.save_checkpoint(reason="requested")
    (cid,) = ids
    assert (t.step, t.branch, info.name) == (11, 0, "step-000011")
    (ack,) = _boundary(t)
    assert ack["id"] == cid and ack["ok"] and ack["checkpoint"] == "step-000005" and ack["branch"] == 1
    assert (t.step, t.branch) == (5, 1) and checkpoint.read_branches(t.run)["active"] == 1
    assert checkpoint.verify(info.path) is None  # the save it interrupted is whole, on branch 0
    assert [c.name for c in checkpoint.lineage(t.run)][:1] == ["step-000005"]


def test_L7_a_save_waiting_for_disk_space_refuses_rollback_and_save(base, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    t = _resumed(base, tmp_path)
    assert t._train_step()
    calls = []

    def room(folder: Path, needed: int) -> str | None:
        calls.append(needed)
        return "only 1 MB free: free space, then resume" if len(calls) == 1 else None

    monkeypatch.setattr(save_guard, "room_problem", room)
    offset = runfolder.read_events(t.run)[1]
    for name, args in (("rollback", {"step": 5}), ("save", {}), ("set_lr", {"factor": 0.5}), ("resume", {})):
        runfolder.send_command(t.run, name, **args)
    info = t.save_checkpoint(reason="interval")  # pauses inside, answers the commands, resumes, saves
    acks = _acks(t.run, offset)
    assert [(a["cmd"], a["ok"]) for a in acks] == [("rollback", False), ("save", False), ("set_lr", True),
                                                   ("resume", True)]
    assert all("waiting for disk space" in a["message"] for a in acks[:2])
    assert len(calls) == 2 and not t.paused and not t.in_save
    assert (t.step, t.branch, info.name) == (11, 0, "step-000011") and _multiplier(info.path) == 0.5
    assert checkpoint.read_branches(t.run)["active"] == 0


def test_L7_set_lr_and_save_while_paused_keep_the_step_and_the_pause(base, tmp_path: Path) -> None:
    t = _resumed(base, tmp_path)
    assert t._train_step() and t._train_step()
    pause, set_lr, save = _boundary(t, ("pause", {}), ("set_lr", {"value": 1e-3}), ("save", {}))
    assert pause["ok"] and set_lr["ok"] and set_lr["lr"] == pytest.approx(1e-3, rel=1e-12)
    assert save["ok"] and save["checkpoint"] == "step-000012" and save["step"] == 12
    assert t.paused and t.step == 12 and runfolder.read_status(t.run)["state"] == "paused"
    folder = t.run / checkpoint.CHECKPOINTS / "step-000012"
    assert checkpoint.verify(folder) is None and _multiplier(folder) == t.schedule.multiplier
    (resume,) = _boundary(t, ("resume", {}))
    assert resume["ok"] and not t.paused
    assert t._train_step() and t.step == 13
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-12)  # the paused set_lr's value


def test_L7_stop_while_paused_saves_the_paused_step_and_refuses_later_commands(base, tmp_path: Path) -> None:
    t = _resumed(base, tmp_path)
    assert t._train_step()
    acks = _boundary(t, ("pause", {}), ("stop", {}), ("resume", {}), ("rollback", {"step": 5}), ("stop", {}))
    assert [(a["cmd"], a["ok"]) for a in acks] == [("pause", True), ("stop", True), ("resume", False),
                                                   ("rollback", False), ("stop", True)]
    assert "stopping" in acks[2]["message"] and "stopping" in acks[3]["message"]
    assert t._loop() == 0  # the paused loop does not hold a stop: it saves and ends at once
    status = runfolder.read_status(t.run)
    assert status["state"] == "stopped" and (t.step, t.branch) == (11, 0)
    assert checkpoint.find_resume(t.run).name == "step-000011"


def test_L7_two_rollbacks_back_to_back_make_two_branches(base, tmp_path: Path) -> None:
    t = _resumed(base, tmp_path)
    acks = _boundary(t, ("set_lr", {"factor": 0.25}), ("rollback", {"step": 5}),
                     ("rollback", {"step": 10, "lr_factor": 0.5}))
    lr, first, second = acks
    assert lr["ok"] and first["ok"] and second["ok"]
    assert (first["checkpoint"], first["branch"], first["step"]) == ("step-000005", 1, 5)
    assert (second["checkpoint"], second["branch"], second["step"]) == ("step-000010", 2, 10)
    # the rollback restored step 5's multiplier (1.0), replacing the set_lr; the second's lr_factor applies
    assert first["multiplier"] == 1.0 and second["multiplier"] == 0.5 == t.schedule.multiplier
    assert (t.step, t.branch) == (10, 2)
    branches = checkpoint.read_branches(t.run)
    assert branches["active"] == 2 and branches["origins"]["1"] == "step-000005"
    assert branches["origins"]["2"] == "step-000010"


# ---- L5: dead and restarting, through the real launcher -------------------------------------------------

@pytest.mark.slow
def test_L5_a_dead_run_refuses_commands_and_a_resume_never_replays_old_ones(tmp_path: Path, capsys) -> None:
    from tui.cli import main

    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 5000}, checkpoint={"every": 5, "keep": 3})
    run = job.create(s, tmp_path / "runs")
    pid = job.launch(run, step_sleep=0.05)
    pid2 = None
    try:
        wait_step(run, 3)
        stop = control(run, "stop", cid="stop-1")
        assert stop["ok"] and wait_exit(pid) == 0
        k = runfolder.read_status(run)["step"]
        assert runfolder.read_status(run)["state"] == "stopped"

        # dead: `control` refuses and writes nothing; a raw writer's command stays in the file, unrun
        size = (run / runfolder.COMMANDS_FILE).stat().st_size
        assert main(["control", str(run), "pause"]) == 2
        assert "is not running" in capsys.readouterr().err
        assert (run / runfolder.COMMANDS_FILE).stat().st_size == size
        stale = runfolder.send_command(run, "stop")
        assert stale in [c["id"] for c in runfolder.CommandReader(run, 0).poll()]  # reading from 0 would replay it

        # restarting: the resumed job skips what was written before its launch, runs what comes after
        pid2 = job.launch(run, resume=True, step_sleep=0.05)
        retry = control(run, "stop", cid="stop-1")  # a client retrying the old stop after the restart
        assert retry["duplicate"] and retry["ok"] and retry["first_step"] == k
        wait_step(run, k + 4)  # still training: neither the stale stop nor the retried one ran
        assert runfolder.read_status(run)["state"] == "running"
        assert control(run, "pause")["ok"]
        assert stale not in [a["id"] for a in _acks(run)]
        assert control(run, "stop")["ok"] and wait_exit(pid2) == 0
        assert runfolder.read_status(run)["state"] == "stopped"
        assert sum(1 for a in _acks(run) if a["id"] == "stop-1" and not a.get("duplicate")) == 1
    finally:
        for p in (pid, pid2):
            if p and processes.pid_alive(p):
                os.kill(p, signal.SIGKILL)
                wait_exit(p)


# ---- L5: the protocol without a model -----------------------------------------------------------------

def test_L5_a_repeat_from_before_a_restart_is_decided_once_for_every_rank(tmp_path: Path) -> None:
    """With several processes only rank 0 reads commands.jsonl and events.jsonl; the earlier answer it
    attaches travels with the command, so a rank without the run folder answers the repeat alike."""
    from types import SimpleNamespace

    from engine.run import controls

    run = runfolder.create_run(tmp_path, "p", "technique = 'scratch'\n")
    runfolder.EventLog(run).emit(ev.ControlAck(id="c1", cmd="save", ok=True, step=4, message="saved step-000004"))
    inbox = controls.CommandInbox(run)
    runfolder.send_command(run, "save", cid="c1")
    (cmd,) = json.loads(json.dumps(inbox.poll()))  # as broadcast to the other ranks
    assert cmd[controls.FIRST_ACK]["step"] == 4
    elsewhere = tmp_path / "rank1"
    elsewhere.mkdir()
    for folder in (run, elsewhere):
        rank = SimpleNamespace(commands=controls.CommandInbox(folder), stop_reason=None, in_save=False, step=9)
        ack = controls.handle(rank, cmd)  # a save would fail on this stand-in: it must not be attempted
        assert ack["duplicate"] and ack["ok"] and ack["first_step"] == 4 and "saved step-000004" in ack["message"]


def test_L5_control_cli_says_queued_with_the_id_and_a_retry_by_id_gets_the_answer(tmp_path: Path, capsys) -> None:
    from tui.cli import main

    run = runfolder.create_run(tmp_path, "q", "technique = 'scratch'\n")
    runfolder.write_status(run, {"state": "running", "pid": os.getpid(), "step": 3,
                                 "pid_start": processes.pid_start_time(os.getpid())})
    # busy: nobody answers within the timeout; the command is queued under its id
    assert main(["control", str(run), "lr", "0.5", "--timeout", "0.3"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    (sent,) = [json.loads(line) for line in (run / runfolder.COMMANDS_FILE).read_text().splitlines()]
    assert "queued" in err and f"lr 0.5 --id {sent['id']}" in err
    # the job answers it; the retry by id sends the same id again and gets the answer, not a second run
    runfolder.EventLog(run).emit(ev.ControlAck(id=sent["id"], cmd="set_lr", ok=True, step=4, message="lr now 1e-3"))
    log = runfolder.EventLog(run)

    def answer_repeat() -> None:  # what the job does with the repeat (tested with a real Trainer above)
        time.sleep(0.3)
        log.emit(ev.ControlAck(id=sent["id"], cmd="set_lr", ok=True, step=5, duplicate=True, first_step=4,
                               message="already answered at step 4, not run again: lr now 1e-3"))

    threading.Thread(target=answer_repeat).start()
    assert main(["control", str(run), "lr", "0.5", "--id", sent["id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == sent["id"] and shown["duplicate"] and shown["first_step"] == 4
    ids = [json.loads(line)["id"] for line in (run / runfolder.COMMANDS_FILE).read_text().splitlines()]
    assert ids == [sent["id"]] * 2

    # the job dies while the client waits: said so, with what a resume does with the command
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    runfolder.write_status(run, {"state": "running", "pid": child.pid, "step": 5,
                                 "pid_start": processes.pid_start_time(child.pid)})
    assert main(["control", str(run), "pause", "--timeout", "60"]) == 1
    child.wait()
    err = " ".join(capsys.readouterr().err.split())
    assert "ended (state: crashed) before acknowledging pause" in err and "does not execute" in err


def test_N8_a_set_lr_past_the_range_is_refused_by_the_job_and_the_lr_kept(base, tmp_path: Path) -> None:
    """Commands written to commands.jsonl past the CLI's check (a script, a stale line): two x1e300 once gave
    "learning rate now inf"; the job refuses each with the range and the next step trains at the same LR."""
    t = _resumed(base, tmp_path)
    before = t.schedule.lrs(t.step)[0]
    acks = _boundary(t, ("set_lr", {"factor": 1e300}), ("set_lr", {"factor": 1e300}), ("set_lr", {"value": 20.0}))
    assert [a["ok"] for a in acks] == [False, False, False]
    assert all("must be from 1e-10 to 10" in a["message"] for a in acks), acks
    assert t.schedule.multiplier == 1.0 and t.schedule.lrs(t.step)[0] == before
    assert t._train_step() and 0 < t.optimizer.param_groups[0]["lr"] <= before  # the schedule's own next LR
