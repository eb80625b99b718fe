"""Pure pieces of the run engine: watchdogs, the LR schedule, the run folder's readers and writers
(RELIABILITY N4, O3, P7, L5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import event_helpers
from engine import processes
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.run.controls import LRSchedule
from engine.errors import UserError
from engine.run.watchdogs import Watchdogs, fault, is_oom


def _feed(w: Watchdogs, losses: list[float], share: float = 0.1) -> list:
    alerts = []
    for i, loss in enumerate(losses):
        alerts += w.on_metrics((i + 1) * 10, loss, share)
    return alerts


def test_plateau_early_in_training_suggests_rescue() -> None:
    w = Watchdogs(total_steps=10_000, plateau_window=100)
    falling = [5.0 - 0.05 * i for i in range(40)]
    assert _feed(Watchdogs(total_steps=10_000, plateau_window=100), falling) == []
    alerts = _feed(w, falling[:20] + [4.0] * 40)
    assert [a.kind for a in alerts] == ["plateau"] and alerts[0].suggest == "rescue"
    # the same flat loss late in training, or after most of the data was seen, is not a local minimum
    assert _feed(Watchdogs(total_steps=10_000, plateau_window=100), falling[:20] + [4.0] * 40, share=0.8) == []


def test_spike_and_overfitting() -> None:
    w = Watchdogs(total_steps=1000)
    alerts = _feed(w, [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 9.0])
    assert [a.kind for a in alerts] == ["spike"] and alerts[0].suggest == "rollback"
    w = Watchdogs(total_steps=1000)
    out = []
    for step, (train, val) in enumerate([(3.0, 2.0), (2.5, 2.1), (2.0, 2.3)], start=1):
        w.on_metrics(step * 100, train, 0.1)
        out += w.on_eval(step * 100, val)
    assert [a.kind for a in out] == ["overfitting"]


def test_fault_hook_and_oom_classifier() -> None:
    os.environ["LLMW_FAULT"] = "nan@step:5,spike@step:7:x50"
    try:
        assert fault("nan", 5) == "" and fault("nan", 6) is None and fault("spike", 7) == "x50"
        assert fault("nan", 5) is None  # once per process: a retried step is not hit again
    finally:
        del os.environ["LLMW_FAULT"]
    assert is_oom(RuntimeError("CUDA error: out of memory")) and is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_schedule_warmup_cosine_multiplier_and_rescue() -> None:
    s = LRSchedule([1.0, 0.5], total_steps=110, warmup_steps=10, kind="cosine", min_ratio=0.1)
    assert s.factor(0) == pytest.approx(0.1) and s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0) and s.factor(110) == pytest.approx(0.1)
    s.multiplier = 0.5
    assert s.lrs(10) == pytest.approx([0.5, 0.25])
    s.set_value(0.2, 60)
    assert s.lrs(60)[0] == pytest.approx(0.2)
    state = json.loads(json.dumps(s.state_dict()))
    t = LRSchedule([1.0, 0.5], total_steps=110, warmup_steps=10)
    t.load_state_dict(state)
    assert t.lrs(60) == pytest.approx(s.lrs(60))

    class Opt:
        param_groups = [{"lr": 0}, {"lr": 0}]

    s.multiplier, s.rescue_until, s.rescue_restore = 0.1, 20, 1.0
    assert s.apply(Opt, 19) == pytest.approx(0.1 * s.factor(19))
    assert s.apply(Opt, 20) == pytest.approx(s.factor(20)) and s.rescue_until is None
    assert Opt.param_groups[1]["lr"] == pytest.approx(0.5 * s.factor(20))


def test_events_and_commands_read_only_whole_lines(tmp_path: Path) -> None:
    log = runfolder.EventLog(tmp_path)
    log.emit(event_helpers.metrics(1, loss=2.0), flush=False)
    assert runfolder.read_events(tmp_path) == ([], 0)  # buffered until flushed
    log.flush()
    with open(tmp_path / runfolder.EVENTS, "a") as f:
        f.write('{"v": 1, "type": "metr')  # a line still being written
    events, offset = runfolder.read_events(tmp_path)
    assert [e["step"] for e in events] == [1] and events[0]["v"] == 1
    assert runfolder.read_events(tmp_path, offset) == ([], offset)

    reader = runfolder.CommandReader(tmp_path)
    assert reader.poll() == []
    cid = runfolder.send_command(tmp_path, "set_lr", factor=0.5)
    with open(tmp_path / runfolder.COMMANDS_FILE, "a") as f:
        f.write("not json\n")
    got = reader.poll()
    assert got[0] == {**got[0], "id": cid, "cmd": "set_lr", "factor": 0.5} and got[1]["cmd"] == "?"
    assert reader.poll() == []
    with pytest.raises(UserError):
        runfolder.send_command(tmp_path, "explode")


def test_wait_ack_and_dead_pid_detection(tmp_path: Path) -> None:
    run = runfolder.create_run(tmp_path, "x", "technique = 'scratch'\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runfolder.write_status(run, {"state": "running", "pid": dead.pid, "step": 7})
    assert runfolder.read_status(run)["state"] == "crashed"
    assert runfolder.wait_ack(run, "abc", timeout=5) is None  # the job is gone: no waiting the full timeout
    runfolder.write_status(run, {"state": "running", "pid": os.getpid(), "step": 7,
                                 "pid_start": processes.pid_start_time(os.getpid())})
    log = runfolder.EventLog(run)
    log.emit(ev.ControlAck(id="abc", cmd="pause", ok=True, step=7, message="paused"))
    assert runfolder.wait_ack(run, "abc", timeout=5)["message"] == "paused"
    runfolder.write_status(run, {"state": "running", "pid": os.getpid(), "pid_start": "1"})  # a reused pid
    assert runfolder.read_status(run)["state"] == "crashed"
    (info,) = runfolder.list_runs(tmp_path)
    assert (info.id, info.technique, info.state) == (run.name, "scratch", "crashed")
    assert runfolder.resolve_run(run.name[-4:], tmp_path) == run == runfolder.resolve_run("latest", tmp_path)


def test_follow_events_gives_resumable_offsets_and_ends_with_the_job(tmp_path: Path) -> None:
    run = runfolder.create_run(tmp_path, "f", "technique = 'scratch'\n")
    log = runfolder.EventLog(run)
    for step in (1, 2, 3):
        log.emit(event_helpers.metrics(step), flush=False)
    log.flush()
    runfolder.write_status(run, {"state": "done", "pid": None})
    seen = list(runfolder.follow_events(run, poll_s=0.01))
    assert [e["step"] for e, _ in seen] == [1, 2, 3]
    rest = list(runfolder.follow_events(run, seen[0][1], poll_s=0.01))  # restart after the first event
    assert [e["step"] for e, _ in rest] == [2, 3]
    log.emit(ev.Done(state="done", step=3))
    assert [e["type"] for e, _ in runfolder.follow_events(run, seen[-1][1], poll_s=0.01)] == ["done"]


@pytest.mark.parametrize(("argv", "want"), [
    (["r", "lr", "0.5"], ("set_lr", {"factor": 0.5})),
    (["r", "lr", "--value", "1e-4"], ("set_lr", {"value": 1e-4})),
    (["r", "rollback", "10", "--lr-factor", "0.5"], ("rollback", {"step": 10, "lr_factor": 0.5})),
    (["r", "rollback", "--checkpoint", "step-000010-b1"], ("rollback", {"checkpoint": "step-000010-b1"})),
    (["r", "rescue", "--factor", "0.2", "--steps", "50"], ("rescue", {"factor": 0.2, "steps": 50})),
    (["r", "pause"], ("pause", {})),
])
def test_control_cli_maps_onto_commands(argv: list[str], want: tuple) -> None:
    import argparse

    from tui.commands import control

    parser = argparse.ArgumentParser()
    control.add_arguments(parser)
    assert control.command_args(parser.parse_args(argv)) == want


@pytest.mark.parametrize("argv", [["r", "lr"], ["r", "rollback"], ["r", "rollback", "2.5"], ["r", "pause", "3"]])
def test_control_cli_rejects_incomplete_commands(argv: list[str]) -> None:
    import argparse

    from tui.commands import control

    parser = argparse.ArgumentParser()
    control.add_arguments(parser)
    with pytest.raises(UserError):
        control.command_args(parser.parse_args(argv))
