"""Escalation of numerical trouble (RELIABILITY N3, N4, N5; engine/run/escalation.py).

Units on synthetic flags, loss series and a CPU GradScaler; then real in-process runs (tiny model, tens
of steps) with injected faults: `nan@try:a-b` makes optimizer-step attempts a..b of the process
non-finite, `spike@try:a-b:x50` multiplies their loss by 50. A pause ends the in-process run with a stop
(nobody would send resume), which saves a checkpoint: its trainer_state.json is what a resume reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine.run import escalation as numerics
from engine.run import watchdogs
from engine.run.watchdogs import Watchdogs
from fault_helpers import (
    STREAK_FAULT, alerts, assert_one_bad_step_goes_on_K_in_a_row_pause, run_in_process, saved_state, states,
)
from run_helpers import make_corpus, tiny_spec

GOOD, BAD_LOSS, BAD_GRAD = [False, False], [True, True], [False, True]


def _spans(n: int, start: int = 0, width: int = 4) -> list[list[int]]:
    return [[0, start + i * width, 0, start + (i + 1) * width] for i in range(n)]


def _roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))  # as saved in trainer_state.json and read back on resume


# ---- units ----------------------------------------------------------------------------------------

def test_N3_streak_is_counted_across_reads_and_a_resume_and_a_good_step_ends_it() -> None:
    state: dict = {}
    # reads at log boundaries: [good, bad] then [bad, bad, good]: a streak of 3 spanning two reads
    bad, esc = numerics.count_nonfinite(state, [GOOD, BAD_LOSS], _spans(2), base=10, patience=3)
    assert bad == [1] and esc is None and state["nonfinite_run"] == 1 and state["nonfinite_from"]["step"] == 12
    state = _roundtrip(state)  # a checkpoint (and resume) between the two reads keeps the count
    bad, esc = numerics.count_nonfinite(state, [BAD_GRAD, BAD_LOSS, GOOD], _spans(3, start=8), base=11, patience=3)
    assert bad == [0, 1] and esc is not None and esc.cause == "nan"
    assert esc.step == 12 and esc.start == (0, 4) and esc.end == (0, 16)  # from the first bad step's data to the last's
    assert "the loss" in esc.detail and "3 steps in a row at step 12" in esc.detail
    assert state["nonfinite_run"] == 0  # escalated: counting starts again
    # control: the same number of bad steps, each broken by a good one, never escalates
    state = {}
    for _ in range(4):
        assert numerics.count_nonfinite(state, [BAD_LOSS, GOOD], _spans(2), base=0, patience=3)[1] is None
    assert numerics.count_nonfinite({}, [BAD_LOSS, BAD_LOSS], _spans(2), 0, patience=3)[1] is None
    # the whole streak's data is covered, also past the step where it reached the patience
    esc = numerics.count_nonfinite({}, [BAD_LOSS] * 5 + [GOOD], _spans(6), 0, patience=3)[1]
    assert esc is not None and esc.end == (0, 20) and esc.skipped == 5


def test_N4_sustained_spike_detector_on_synthetic_series_survives_a_resume() -> None:
    base = [3.0 - 0.02 * i for i in range(12)]

    def runs(w: Watchdogs, values: list[float], start: int) -> list[int]:
        out = []
        for i, v in enumerate(values):
            w.on_metrics(start + i, v, 0.1)
            out.append(w.state["spike_run"])
        return out

    w = Watchdogs(total_steps=1000)
    assert runs(w, base + [150.0] * 4, 1)[-5:] == [0, 1, 2, 3, 4]  # a spike is kept out of its own baseline
    assert w.state["smooth"] < 3.0
    # isolated spikes (the detector warns each time a window allows) never build a run
    w = Watchdogs(total_steps=1000)
    assert max(runs(w, base + [150.0, 2.7, 150.0, 2.7, 150.0, 2.7], 1)) == 1
    # a resume between two spiking intervals continues the run; a fresh detector would not see the second
    before = Watchdogs(total_steps=1000)
    runs(before, base + [150.0], 1)
    resumed = Watchdogs(total_steps=1000)
    resumed.state = _roundtrip(before.state)
    assert runs(resumed, [150.0, 150.0], 14) == [2, 3]
    assert runs(Watchdogs(total_steps=1000), [150.0, 150.0], 14) == [0, 0]  # control: no window, no spike


def test_N5_grad_scaler_collapse_warns_after_repeated_backoffs() -> None:
    import torch

    def scaler_run(grad: float, steps: int, log_every: int) -> list[tuple[int, float, str | None]]:
        p = torch.nn.Parameter(torch.ones(4))
        opt = torch.optim.SGD([p], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        monitor = numerics.ScaleMonitor()
        out = []
        for step in range(1, steps + 1):
            opt.zero_grad()
            scaler.scale((p * grad).sum()).backward()
            scaler.step(opt)
            scaler.update()
            if step % log_every == 0:  # read at log time only
                monitor.state = _roundtrip(monitor.state)  # and across a resume
                alert = monitor.on_scale(step, scaler.get_scale())
                out.append((step, scaler.get_scale(), alert and alert.kind))
        assert torch.isfinite(p).all()  # every overflowing step was skipped
        return out

    infinite = scaler_run(float("inf"), 30, 2)
    warned = [(step, scale) for step, scale, kind in infinite if kind]
    assert len(warned) == 1 and warned[0][1] <= 2.0 ** 8  # once, after 8 or more halvings
    assert infinite[0][2] is None and infinite[0][1] == 2.0 ** 14  # two backoffs are routine: no warning
    assert [kind for _, _, kind in infinite].count("fp16_scale") == 1  # not repeated while it stays low
    finite = scaler_run(1.0, 30, 2)
    assert all(kind is None for _, _, kind in finite) and finite[-1][1] == 2.0 ** 16  # control: no overflow
    low = numerics.ScaleMonitor()  # below the floor counts even without a visible peak
    assert low.on_scale(10, 0.5) is not None and low.on_scale(20, 0.25) is None
    assert low.on_scale(30, 4.0) is None and low.on_scale(40, 0.5) is not None  # warns again after recovering


def test_N3_N4_settings_are_validated_and_faults_take_ranges_of_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import UserError
    from engine.spec import from_dict

    for key, value in (("nonfinite_patience", 0), ("spike_patience", -1), ("auto_rollback_max", -1),
                       ("auto_rollback", 1)):
        with pytest.raises(UserError, match=f"train.{key}"):
            from_dict({"train": {key: value}})
    base = from_dict({})
    assert (base.train.nonfinite_patience, base.train.auto_rollback) == (3, False)
    # resuming with auto-rollback switched on is allowed: these settings are not part of the fingerprint
    assert from_dict({"train": {"auto_rollback": True, "spike_patience": 5}}).fingerprint() == base.fingerprint()
    monkeypatch.setenv("LLMW_FAULT", "nan@try:3-4,spike@step:7:x20")
    monkeypatch.setattr(watchdogs, "_fired", set())
    hits = [watchdogs.fault("nan", step=1, attempt=a) for a in range(1, 6)]
    assert hits == [None, None, "", "", None]
    assert watchdogs.fault("nan", step=1, attempt=3) is None  # each attempt fires once
    assert watchdogs.fault("spike", step=7, attempt=99) == "x20" and watchdogs.fault("spike", 7, 100) is None


# ---- in-process runs ------------------------------------------------------------------------------

def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, **train) -> tuple[object, int, list[dict]]:
    """A tiny run in process with LLMW_FAULT; a pause becomes a stop. Returns (trainer, exit code, events)."""
    s = tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": 30, **train},
                  log={"every": 2}, checkpoint={"every": 4, "keep": 20})
    return run_in_process(s, tmp_path / "runs", monkeypatch, fault)


@pytest.mark.parametrize("on_device", [True, False], ids=["device-flags", "sync-per-step"])
def test_N3_one_bad_step_goes_on_K_in_a_row_across_two_reads_pause_without_rolling_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_device: bool) -> None:
    from engine.run import step_guard

    if not on_device:  # as with bitsandbytes' 8-bit optimizers: each step's flags are read at once
        monkeypatch.setattr(step_guard, "skips_on_device", lambda *a: False)
    # attempt 3 alone; attempts 10-12 in a row: log every 2 reads them in two intervals
    trainer, code, evs = _run(tmp_path, monkeypatch, STREAK_FAULT)
    assert trainer.device_guard == on_device
    assert_one_bad_step_goes_on_K_in_a_row_pause(trainer, code, evs, on_device)


def test_N3_auto_rollback_halves_the_lr_skips_the_data_is_capped_and_survives_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.run.trainer import Trainer

    # attempts 14-16 fail once; from attempt 22 on every step fails: two rollbacks, then a pause
    trainer, code, evs = _run(tmp_path, monkeypatch, "nan@try:14-16,nan@try:22-200", auto_rollback=True,
                              auto_rollback_max=2)
    rolls = alerts(evs, "rollback")
    assert len(rolls) == 2 and [r["multiplier"] for r in rolls] == [0.5, 0.25]
    first = rolls[0]
    assert first["checkpoint"] == "step-000012" and first["branch"] == 1  # the newest before the streak's step 14
    assert first["skipped_to"][1] > first["skipped_from"][1]  # past the streak's data, not retrained
    rolled = [e for e in evs if e.get("rollback_to")]
    assert [e["rollback_to"] for e in rolled][0] == "step-000012"
    assert code == 11 and states(evs).count("paused") == 1
    final = alerts(evs, "nan")[-1]
    assert final["severity"] == "error" and "auto-rollback already tried 2 times" in final["message"]
    # after the first rollback, the next metrics carry half the LR the schedule gives for that step
    after = [e for e in evs[evs.index(rolled[0]):] if e["type"] == "metrics"][0]
    sched = trainer.schedule
    assert after["train/lr"] == pytest.approx(0.5 * trainer.spec.train.lr * sched.factor(after["step"] - 1))
    saved = saved_state(evs)
    assert saved["schedule"]["multiplier"] == 0.25 and saved["watchdogs"]["rollbacks"] == 2

    import torch
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    threads = torch.get_num_threads()
    resumed = Trainer(trainer.run, trainer.spec, resume=True)
    try:
        resumed._prepare()
        resumed._resume()
        # the halved LR and the used attempts survive: a third escalation would pause, not roll back
        assert resumed.schedule.multiplier == 0.25 and resumed.watchdogs.state["rollbacks"] == 2
    finally:
        resumed.events.close()
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)


def test_N4_sustained_spike_pauses_and_an_isolated_one_only_warns(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # attempt 13: one spiking interval (warn); attempts 19-24: three intervals of two steps (escalate)
    # the detector's rungs: the single-step skip (armed after ten logged intervals) is off here, its own
    # tests are in test_reliability_spike_skip.py
    trainer, code, evs = _run(tmp_path, monkeypatch, "spike@try:13:x50,spike@try:19-24:x50", spike_patience=3,
                              spike_skip=False)
    spikes = alerts(evs, "spike")
    warn = [a for a in spikes if a["severity"] == "warning"]
    assert warn and warn[0]["step"] == 14 and warn[0]["suggest"] == "rollback"
    assert [a["severity"] for a in spikes][-1] == "error"
    escalated = spikes[-1]
    assert escalated["step"] == 19 and "3 logging intervals in a row" in escalated["message"]
    assert code == 11 and trainer.step == 24 and states(evs).count("paused") == 1
    assert not alerts(evs, "rollback")  # negative control: without auto_rollback nothing is rolled back
    assert math.isfinite(saved_state(evs)["watchdogs"]["smooth"])


def test_N4_sustained_spike_auto_rollback_then_the_run_finishes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, code, evs = _run(tmp_path, monkeypatch, "spike@try:19-24:x50", spike_patience=3, auto_rollback=True,
                              spike_skip=False)
    roll = alerts(evs, "rollback")
    assert len(roll) == 1 and roll[0]["checkpoint"] == "step-000016" and roll[0]["multiplier"] == 0.5
    assert roll[0]["skipped_to"][1] > roll[0]["skipped_from"][1]
    assert code == 0 and states(evs)[-1] == "done" and "paused" not in states(evs)
    assert trainer.step == 30 and ck.lineage(trainer.run)[0].branch == 1
    assert saved_state(evs)["schedule"]["multiplier"] == 0.5
