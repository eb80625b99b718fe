"""Kill and resume: exact losses after SIGKILL, rollback branches after a crash mid-save, set_lr kept
across a kill, NaN skipped and paused (RELIABILITY G5, C1, R1, R7, L2, L4, L6, N1)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checkpoints import store as checkpoint

from engine import processes
from engine.runfolder import folder as runfolder
from engine.run.controls import LRSchedule
from run_helpers import (control, events, launch, losses_by_step, make_corpus, resume, tiny_spec, wait_exit, wait_for,
                         wait_step)

pytestmark = pytest.mark.slow


def _after(evs: list[dict], pred) -> list[dict]:
    """The events after the last one matching `pred`."""
    idx = max(i for i, e in enumerate(evs) if pred(e))
    return evs[idx + 1:]


def _resumed(e: dict) -> bool:
    return e["type"] == "state" and "resumed_from" in e


def test_sigkill_then_resume_logs_the_same_losses_as_an_uninterrupted_run(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 30}, checkpoint={"every": 10, "keep": 5})
    straight, pid_s = launch(s, tmp_path / "runs")
    killed, pid_k = launch(s, tmp_path / "runs", step_sleep=0.15)  # slow enough to kill it between 21 and 30
    try:
        wait_step(killed, 21)
        os.kill(pid_k, signal.SIGKILL)
        assert wait_exit(pid_k) == -signal.SIGKILL
        assert runfolder.read_status(killed)["state"] == "crashed"
        assert wait_exit(pid_s) == 0
        pid_k = resume(killed)
        assert wait_exit(pid_k) == 0
    finally:
        for pid in (pid_s, pid_k):
            if processes.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    want = losses_by_step(events(straight))
    evs = events(killed)
    assert [e for e in evs if _resumed(e)][-1]["resumed_from"] == "step-000020"
    before, after = losses_by_step(evs[: evs.index([e for e in evs if _resumed(e)][-1])]), losses_by_step(_after(evs, _resumed))
    assert sorted(after) == list(range(21, 31))
    for step in range(1, 21):
        assert before[step] == want[step]
    for step in range(21, 31):
        assert after[step] == want[step], step  # bit-identical on the CPU (same threads, same order)
    assert runfolder.read_status(killed)["state"] == "done"

    # the finished run's final model loads with transformers and generates
    out = subprocess.run([sys.executable, "-m", "tui.cli", "generate", str(straight), "the", "--max-new-tokens", "8",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["source"] == "final"


def test_rollback_crash_mid_save_resume_keeps_the_new_branch_then_set_lr_survives_and_nan_pauses(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 5000, "nonfinite_patience": 1},  # pause at one NaN
                  checkpoint={"every": 10, "keep": 1000})
    sched = LRSchedule([s.train.lr], s.train.max_steps, s.train.warmup_steps, s.train.schedule, s.train.min_lr_ratio)
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.02, env={"LLMW_CRASH_AT": "ckpt:before_manifest:b1"})
    ckpts = run / "checkpoints"
    try:
        # three checkpoints, roll back to the first; the first save on the new branch is killed mid-write
        wait_for(lambda: (ckpts / "step-000030").is_dir(), 240, "checkpoint 30")
        ack = control(run, "rollback", step=10)
        assert ack["ok"] and ack["branch"] == 1
        assert wait_exit(pid) == 137
        assert not (ckpts / "step-000020-b1").exists()
        assert any(p.name.startswith(".tmp-step-000020-b1") for p in ckpts.iterdir())  # the half save
        assert runfolder.read_status(run)["state"] == "crashed"
        assert checkpoint.find_resume(run).name == "step-000010"  # not step-000030 of the abandoned branch
        branch1 = losses_by_step(_after(events(run), lambda e: e.get("rollback_to") == "step-000010"))

        pid = resume(run, step_sleep=0.02)
        early = control(run, "set_lr", factor=1.0)  # sent while the job still starts: kept and answered
        assert early["ok"] and early["step"] == 10
        wait_for(lambda: (ckpts / "step-000020-b1" / "manifest.json").is_file(), 240, "branch 1's checkpoint 20")
        evs = events(run)
        resumed = [e for e in evs if _resumed(e)][-1]
        assert resumed["resumed_from"] == "step-000010" and resumed["branch"] == 1
        assert not any(p.name.startswith(".tmp-step-000020-b1") for p in ckpts.iterdir())  # cleaned at resume
        again = losses_by_step(_after(evs, _resumed))
        assert min(again) == 11
        for step in range(11, 20):  # the same branch replayed from the same checkpoint: the same losses
            assert again[step] == pytest.approx(branch1[step], rel=1e-6)

        # set_lr, save, SIGKILL, resume: the lowered LR is still in force (paused first, so that no periodic
        # save can land between the requested one and the kill)
        assert control(run, "pause")["ok"]
        lowered = control(run, "set_lr", factor=0.5)
        saved = control(run, "save")
        at = saved["step"]
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid) == -signal.SIGKILL
        pid = resume(run, step_sleep=0.02, env={"LLMW_FAULT": f"nan@step:{at + 3}"})

        # NaN at step at+3: alert, step skipped, run paused, nothing non-finite kept
        alert = wait_for(lambda: [e for e in events(run, "alert") if e["kind"] == "nan"], 240, "the NaN alert")[0]
        assert alert["step"] == at + 3 and alert["suggest"] == "rollback"
        status = wait_for(lambda: (st := runfolder.read_status(run))["state"] == "paused" and st, 240, "pause")
        assert status["step"] == at + 2
        evs = events(run)
        after = [e for e in _after(evs, _resumed) if e["type"] == "metrics"]
        assert [e["step"] for e in after] == [at + 1, at + 2]
        assert after[0]["train/lr"] == pytest.approx(lowered["multiplier"] * s.train.lr * sched.factor(at))
        assert lowered["multiplier"] == pytest.approx(0.5)
        ack = control(run, "save")
        _assert_finite(ckpts / ack["checkpoint"])
        assert control(run, "stop")["ok"]
        assert wait_exit(pid) == 0
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _assert_finite(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    for name, t in load_file(str(folder / "model.safetensors")).items():
        assert torch.isfinite(t).all(), name
    state = torch.load(folder / "optimizer.pt", weights_only=True)["state"]
    for moments in state.values():
        for v in moments.values():
            if torch.is_tensor(v):
                assert torch.isfinite(v).all()
    assert math.isfinite(json.loads((folder / "trainer_state.json").read_text())["watchdogs"]["smooth"])
