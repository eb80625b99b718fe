"""Live controls on a real detached job: pause, set_lr, save, rollback, rescue, stop (RELIABILITY L1-L3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.checkpoints import store as checkpoint

from engine import processes
from engine.runfolder import folder as runfolder
from engine.run.controls import LRSchedule
from run_helpers import control, events, launch, make_corpus, tiny_spec, wait_exit, wait_for, wait_step

pytestmark = pytest.mark.slow


def _metrics_after(run: Path, offset: int) -> list[dict]:
    evs, _ = runfolder.read_events(run, offset)
    return [e for e in evs if e["type"] == "metrics"]


def _metrics_after_ack(run: Path, cid: str) -> list[dict]:
    evs = events(run)
    at = next(i for i, e in enumerate(evs) if e["type"] == "control_ack" and e["id"] == cid)
    return [e for e in evs[at:] if e["type"] == "metrics"]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_pause_set_lr_save_rollback_rescue_stop(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 5000}, checkpoint={"every": 10, "keep": 1000})  # no rotation mid-test
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.02)
    sched = LRSchedule([s.train.lr], s.train.max_steps, s.train.warmup_steps, s.train.schedule, s.train.min_lr_ratio)
    try:
        wait_step(run, 12)

        # pause: no optimizer step while paused; the heartbeat goes on; resume continues from the same step
        ack = control(run, "pause")
        assert ack["ok"] and ack["cmd"] == "pause"
        at, n_metrics, before = ack["step"], len(events(run, "metrics")), runfolder.read_status(run)
        time.sleep(1.5)
        status = runfolder.read_status(run)
        assert status["state"] == "paused" and status["step"] == at
        assert status["updated"] > before["updated"]
        assert len(events(run, "metrics")) == n_metrics

        # set_lr (sent while paused): the next logged LR is the new one
        ack = control(run, "set_lr", factor=0.5)
        assert ack["ok"] and ack["multiplier"] == pytest.approx(0.5)
        new_lr = ack["lr"]
        assert new_lr == pytest.approx(0.5 * s.train.lr * sched.factor(at))
        _, offset = runfolder.read_events(run)
        assert control(run, "resume")["step"] == at
        first = wait_for(lambda: _metrics_after(run, offset), what="a step after resume")[0]
        assert first["step"] == at + 1 and first["train/lr"] == pytest.approx(new_lr, rel=1e-9)

        # save now
        ack = control(run, "save")
        assert ack["ok"] and (run / "checkpoints" / ack["checkpoint"] / "manifest.json").is_file()

        # rollback to 10 and save at once: branch 1's first checkpoint holds exactly step 10's state (sent while
        # paused, so that no step runs between the two whichever poll of the job reads the second)
        assert control(run, "pause")["ok"]
        _, offset = runfolder.read_events(run)
        c1 = runfolder.send_command(run, "rollback", step=10)
        c2 = runfolder.send_command(run, "save")
        rb = runfolder.wait_ack(run, c1, 240, from_offset=offset)
        sv = runfolder.wait_ack(run, c2, 240, from_offset=offset)
        assert rb["ok"] and rb["branch"] == 1 and rb["step"] == 10, rb
        assert sv["ok"] and sv["step"] == 10 and sv["checkpoint"] == "step-000010-b1", sv
        assert control(run, "resume")["step"] == 10
        ckpts = run / "checkpoints"
        old, new = _tensors(ckpts / "step-000010"), _tensors(ckpts / "step-000010-b1")
        assert old.keys() == new.keys() and all((old[k] == new[k]).all() for k in old)
        assert (ckpts / "step-000010" / "optimizer.pt").read_bytes() == (ckpts / "step-000010-b1" / "optimizer.pt").read_bytes()
        first = wait_for(lambda: _metrics_after_ack(run, c2), what="a step after rollback")[0]
        assert first["step"] == 11 and first["branch"] == 1
        assert first["train/lr"] == pytest.approx(s.train.lr * sched.factor(10))  # step 10's multiplier (1.0)

        # rescue: back to a checkpoint at least 5 steps back, LR x0.1 for 6 steps, then restored
        wait_step(run, 22)
        ack = control(run, "rescue", factor=0.1, steps=6, back=5)
        assert ack["ok"], ack
        target, until, mult = int(ack["checkpoint"][5:11]), ack["until"], ack["multiplier"]
        assert until == target + 6 and ack["branch"] == 2
        wait_for(lambda: any(e["step"] >= until + 2 for e in _metrics_after_ack(run, ack["id"])), what="rescue's end")
        lr = {e["step"]: e["train/lr"] for e in _metrics_after_ack(run, ack["id"])}
        restored = mult / 0.1
        assert lr[target + 1] == pytest.approx(s.train.lr * sched.factor(target) * restored * 0.1)
        assert lr[until] == pytest.approx(s.train.lr * sched.factor(until - 1) * restored * 0.1)
        assert lr[until + 1] == pytest.approx(s.train.lr * sched.factor(until) * restored)

        # a command with bad arguments is refused, by id, and the run goes on
        bad = control(run, "set_lr", factor=-2)
        assert bad["ok"] is False and "positive" in bad["message"]

        # "save now" followed at once by SIGKILL: the checkpoint is either whole or absent (L6)
        runfolder.send_command(run, "save")
        time.sleep(0.03)
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid) == -signal.SIGKILL
        assert runfolder.read_status(run)["state"] == "crashed"
        for c in checkpoint.list_checkpoints(run, include_invalid=True):
            assert checkpoint.verify(c.path) is None, c.name
        newest, branches = checkpoint.find_resume(run), checkpoint.read_branches(run)
        assert branches["active"] == 2  # the rescue's branch: resume continues it, or starts at its origin
        assert newest.branch == 2 or newest.name == branches["origins"]["2"] == ack["checkpoint"]
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid)

    # generate samples from the newest checkpoint (the run stopped before a final model)
    out = subprocess.run([sys.executable, "-m", "tui.cli", "generate", str(run), "the cat", "--max-new-tokens", "12",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["source"].startswith("step-") and len(result["text"]) > 0
