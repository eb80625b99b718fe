"""Assertions shared by the run-level fault tests of every technique (RELIABILITY P8, C4, S6, S7, N1, N3):
scratch in test_reliability_faults and test_reliability_escalation, LoRA and distillation in
test_reliability_techniques. Each helper states what the row promises, so each technique is held to the
same words."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.checkpoints import store as ck
from engine import spec
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.run import watchdogs
from run_helpers import events, in_process_trainer, wait_for

CANARY = "hf_CANARY" + "x7Qz" * 6 + "k"  # the shape of a Hub token, 34 characters
CANARY_ENV = {"HF_TOKEN": CANARY, "HUGGING_FACE_HUB_TOKEN": CANARY}


def files_with(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def assert_no_canary(run: Path) -> None:
    """S6: the canary is in no file of the run folder (spec, events, status, job.log with its tracebacks,
    checkpoints), neither whole nor in part."""
    assert files_with(run, CANARY) == []
    assert files_with(run, "CANARY") == []


def assert_failed_by_injected_exception(run: Path, step: int, last: str) -> None:
    """P8: an exception fails the run with a traceback summary and names the last valid checkpoint;
    the run folder is private (S7)."""
    status = runfolder.read_status(run)
    assert status["state"] == "failed" and f"injected fault at step {step}" in status["message"]
    assert f"last checkpoint {last}" in status["message"]
    error = events(run, "error")[-1]
    assert error["kind"] == "internal" and "RuntimeError" in error["traceback"] and "trainer.py" in error["traceback"]
    assert run.stat().st_mode & 0o777 == 0o700  # S7


def half_the_size_of(run: Path, file: Path) -> int:
    """A file-size limit (RLIMIT_FSIZE) at half the size of `file`, a checkpoint's file: the next save
    cannot write it. job.log is moved aside (the limit applies to it too); every other file of the run
    folder stays well below the limit, so only the checkpoint hits it."""
    limit = file.stat().st_size // 2
    (run / runfolder.LOG).rename(run / "job.log.1")
    assert max(p.stat().st_size for p in run.iterdir() if p.is_file() and p.name != "job.log.1") < limit // 2
    return limit


def wait_disk_full_pause(run: Path, kept: str) -> dict[str, Any]:
    """C4: the save fails, the run pauses saying disk full and that `kept` is intact, and leaves no
    temporary folder; `kept` verifies and is what a resume would load."""
    status = wait_for(lambda: (st := runfolder.read_status(run)).get("state") == "paused" and st, what="disk-full pause")
    assert "disk full" in status["message"] and f"{kept} is intact" in status["message"]
    assert "Free space, then resume" in status["message"]
    alert = events(run, "alert")[-1]
    assert alert["kind"] == "disk_full" and alert["suggest"] == "resume"
    assert ck.verify(run / "checkpoints" / kept) is None
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert ck.find_resume(run).name == kept
    return status


def assert_stopped_while_disk_full(run: Path, code: int) -> None:
    """C4: a stop while waiting for space fails the run (exit 2), still saying disk full."""
    assert code == 2
    status = runfolder.read_status(run)
    assert status["state"] == "failed" and "disk full" in status["message"]


# ---- non-finite steps, in process (N1, N3) ----------------------------------------------------------

def run_in_process(s: spec.RunSpec, runs: Path, monkeypatch: Any, fault: str,
                   prepare: Callable[[Any], None] | None = None) -> tuple[Any, int, list[dict]]:
    """Run `s` in this process with LLMW_FAULT=`fault`; a pause becomes a stop (nobody would send resume),
    which saves a checkpoint. `prepare(trainer)` may wrap its methods first. Returns (trainer, exit code, events)."""
    from engine.run.trainer import Trainer

    monkeypatch.setenv("LLMW_FAULT", fault)
    monkeypatch.setattr(watchdogs, "_fired", set())  # faults fire once per process: each run starts afresh
    trainer = Trainer(job.create(s, runs), s)
    set_state = trainer.set_state

    def pause_then_stop(state: str, message: str = "", **fields) -> None:
        set_state(state, message, **fields)
        if state == "paused":
            trainer.request_stop("test")

    monkeypatch.setattr(trainer, "set_state", pause_then_stop)
    if prepare is not None:
        prepare(trainer)
    with in_process_trainer():
        code = trainer.run_job()
    return trainer, code, runfolder.read_events(trainer.run)[0]


def alerts(evs: list[dict], kind: str | None = None) -> list[dict]:
    return [e for e in evs if e["type"] == "alert" and (kind is None or e["kind"] == kind)]


def states(evs: list[dict]) -> list[str]:
    return [e["state"] for e in evs if e["type"] == "state"]


def saved_state(evs: list[dict]) -> dict:
    last = [e for e in evs if e["type"] == "checkpoint"][-1]
    return json.loads((Path(last["path"]) / "trainer_state.json").read_text())


STREAK_FAULT = "nan@try:3,nan@try:10-12"  # attempt 3 alone; attempts 10-12 in a row (K = 3)


def assert_one_bad_step_goes_on_K_in_a_row_pause(trainer: Any, code: int, evs: list[dict], on_device: bool) -> None:
    """N1, N3 under STREAK_FAULT, logging every 2 steps: the single bad step is skipped with a warning and
    training goes on; the streak of 3 pauses (then stops, in process) without rolling back; no logged
    metric carries the bad steps' values."""
    nan = alerts(evs, "nan")
    assert nan[0]["severity"] == "warning" and nan[0]["step"] == 3 and nan[0]["skipped"] == 1
    assert "training goes on" in nan[0]["message"]
    assert nan[-1]["severity"] == "error" and nan[-1]["suggest"] == "rollback" and "3 steps in a row" in nan[-1]["message"]
    # the single one, the streak's first read(s), the escalation; read per step, each bad step warns
    assert [a["severity"] for a in nan] == ["warning"] * (2 if on_device else 3) + ["error"]
    assert states(evs).count("paused") == 1 and not alerts(evs, "rollback")  # negative control: no auto-rollback
    assert not [e for e in evs if e.get("rollback_to")]
    # 4 of 12 attempts skipped: paused (then stopped here) at step 8, before the streak's first step 9; read
    # at the logs, the good attempt 13 that closed the second read counted too
    assert code == 11 and trainer.step == (9 if on_device else 8) and nan[-1]["step"] == 9
    assert saved_state(evs)["schedule"]["multiplier"] == 1.0
    # a skipped step adds nothing to what is logged: every metric of every interval is finite
    metrics = [e for e in evs if e["type"] == "metrics"]
    assert metrics and all(math.isfinite(v) for e in metrics for v in e.values() if isinstance(v, float)), metrics
