"""The "skip" rung of the loss-spike ladder (RELIABILITY N4): warn, skip, pause, roll back.

A single optimizer step whose loss is far above the recent level is skipped on the device like a non-finite
one (engine/run/step_guard.py's third flag, against a threshold engine/run/watchdogs.py sets at each log), taken off
the step and token counts and alerted at the next read; skipped spikes in a row escalate like a sustained
spike. Units on synthetic series, then tiny in-process runs with `spike@try:k:x50` (log every step, so the
skip is armed after warm-up and ten logged intervals), and a manual rollback that beats a pending automatic one.
The two-process agreement is in tests/e2e/test_distributed_numerics.py.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from engine.run import job

from engine.run import escalation as numerics

from engine.runfolder import folder as runfolder

from engine.run import step_guard

from engine.run import watchdogs
from engine.run.watchdogs import SKIP_MIN_INTERVALS, Watchdogs
from fault_helpers import alerts, run_in_process
from run_helpers import make_corpus, tiny_spec

GOOD, SPIKE, NAN = [False, False, False], [False, False, True], [True, True, False]


def _spans(n: int) -> list[list[int]]:
    return [[0, 4 * i, 0, 4 * (i + 1)] for i in range(n)]


def _feed(w: Watchdogs, steps: list[float], every: int, start: int = 0) -> list[tuple[int, float]]:
    """Log per-step losses `every` steps at a time as the trainer does (interval mean and mean square, skipped
    steps left out); returns (step, threshold in force) for each step."""
    out, kept = [], []
    for i, x in enumerate(steps, start=start + 1):
        threshold = w.skip_threshold(i - 1 - (i - 1) % every)  # set at the last log
        out.append((i, threshold))
        if x <= threshold:
            kept.append(x)
        if i % every == 0 and kept:
            w.on_metrics(i, sum(kept) / len(kept), 0.1, sum(v * v for v in kept) / len(kept))
            kept = []
    return out


# ---- units ----------------------------------------------------------------------------------------

def test_N4_skip_threshold_is_conservative_off_in_warmup_and_survives_a_resume() -> None:
    rng = random.Random(0)
    noisy = [3.0 + 1.5 * math.exp(-i / 300) + rng.gauss(0, 0.25) for i in range(3000)]
    # not armed before ten logged intervals measured the spread (the first one has no level to measure from)
    early = [i for i, t in _feed(Watchdogs(total_steps=3000), noisy, every=10) if math.isfinite(t)]
    assert early[0] == 10 * (SKIP_MIN_INTERVALS + 1) + 1
    # nor during warm-up
    w = Watchdogs(total_steps=3000, warmup_steps=300)
    seen = _feed(w, noisy, every=10)
    assert [i for i, t in seen if math.isfinite(t)][0] == 311
    # ordinary noise (sd 0.25, falling trend) is never skipped in 3000 steps: the skip takes clear outliers only
    assert not [i for (i, t), x in zip(seen, noisy) if x > t]
    s = w.state
    level, spread = s["smooth"], math.sqrt(s["spread"])
    assert 0.2 < spread < 0.5  # the per-step spread, measured from interval means and mean squares
    assert w.skip_threshold(3000) == pytest.approx(max(level + 6 * spread, 3 * level))
    # a 4x outlier is above it; 2.5x (the detector's warning, not a skip) is not
    assert 4 * level > w.skip_threshold(3000) > 2.5 * level
    # a noisy series: the 6 spreads over the level dominate the 3x floor
    wide = Watchdogs(total_steps=1000)
    _feed(wide, [1.0 + rng.gauss(0, 0.6) for _ in range(400)], every=5)
    assert wide.skip_threshold(400) > 3 * wide.state["smooth"]
    # the window survives a resume (the state is saved in checkpoints); a fresh detector is not armed
    resumed = Watchdogs(total_steps=3000, warmup_steps=300)
    resumed.state = json.loads(json.dumps(w.state))
    assert resumed.skip_threshold(3000) == w.skip_threshold(3000)
    assert math.isinf(Watchdogs(total_steps=3000).skip_threshold(3000))
    # after a pause for a sustained spike the user resumed: the new level is accepted, the skip re-learns the spread
    w.accept_level(40.0)
    assert math.isinf(w.skip_threshold(3001)) and w.state["smooth"] == 40.0
    # a non-positive loss level (a ratio means nothing) never arms
    neg = Watchdogs(total_steps=1000)
    _feed(neg, [-1.0 + 0.01 * rng.random() for _ in range(200)], every=5)
    assert math.isinf(neg.skip_threshold(200))


def test_N4_skipped_spikes_in_a_row_escalate_across_reads_and_a_good_step_ends_them() -> None:
    state: dict = {}
    # reads: [good, spike] then [spike, nan, spike]: the non-finite step neither ends nor extends the spike streak
    bad, esc = numerics.count_streak(state, "spike", [GOOD, SPIKE], _spans(2), base=10, patience=3, losses=[3, 90])
    assert bad == [1] and esc is None and state["skip_run"] == 1 and state["skip_from"]["step"] == 12
    state = json.loads(json.dumps(state))  # a checkpoint between the reads keeps the count
    bad, esc = numerics.count_streak(state, "spike", [SPIKE, NAN, SPIKE], _spans(3), base=11, patience=3,
                                     losses=[80, math.nan, 70])
    assert bad == [0, 2] and esc is not None and esc.cause == "spike" and esc.step == 12
    assert "3 steps in a row from step 12" in esc.detail and esc.level == 70 and esc.end == (0, 12)
    assert state["skip_run"] == 0
    # the non-finite streak counts only the non-finite step; the spikes do not feed it
    assert numerics.count_nonfinite({}, [SPIKE, NAN, SPIKE], _spans(3), 0, patience=2)[0] == [1]
    # control: a good step between skipped spikes ends the streak
    state = {}
    for _ in range(4):
        assert numerics.count_streak(state, "spike", [SPIKE, SPIKE, GOOD], _spans(3), 0, patience=3)[1] is None


def test_N4_the_spike_flag_skips_the_fused_step_weights_and_moments_untouched() -> None:
    import torch

    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    assert step_guard.skips_on_device(opt)
    threshold = torch.full((), math.inf)

    def step(loss_value: float) -> torch.Tensor:
        opt.zero_grad()
        loss = (p * loss_value).sum()
        loss.backward()
        flags = step_guard.nonfinite_flags(loss.detach(), p.grad.norm(), threshold)
        step_guard.step_unless(opt, flags.any())
        return flags

    step(1.0)
    threshold.fill_(10.0)  # as the trainer arms it at a log: no sync
    before = (p.detach().clone(), opt.state[p]["exp_avg"].clone(), float(opt.state[p]["step"]))
    flags = step(50.0)  # loss 200 > 10
    assert flags.tolist() == [False, False, True]
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
    assert float(opt.state[p]["step"]) == before[2] == 1.0
    assert step(1.0).tolist() == [False, False, False] and not torch.equal(p, before[0])  # control: it steps
    assert step_guard.nonfinite_flags(torch.tensor(math.nan), torch.tensor(1.0), threshold).tolist() == \
        [True, False, False]  # NaN compares false: counted as non-finite, not as a spike


def test_N4_fp16_scaler_survives_a_skipped_finite_step() -> None:
    """With a GradScaler (fp16 on a GPU) a skipped spike step calls scaler.update() instead of step(): the
    next step's unscale_ must work (the trainer's wiring needs a GPU; this is the call sequence on the CPU)."""
    import torch

    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    for skip in (True, False):
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        scaler.unscale_(opt)  # accelerate's clip_grad_norm_
        if skip:
            scaler.update()
        else:
            scaler.step(opt)
            scaler.update()
    assert torch.allclose(p, torch.full((4,), 0.9)) and scaler.get_scale() == 2.0 ** 8


# ---- in-process runs ------------------------------------------------------------------------------

def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, on_escalate=None, **train
         ) -> tuple[object, int, list[dict]]:
    """A tiny in-process run, logging every step, with LLMW_FAULT; a pause becomes a stop. The trainer comes
    back with `applied`: attempt -> whether that step changed the weights."""
    import torch

    s = tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": 20, **train},
                  checkpoint={"every": 4, "keep": 20})
    applied: dict[int, bool] = {}

    def prepare(trainer) -> None:
        if on_escalate is not None:
            escalate = numerics.escalate
            monkeypatch.setattr(numerics, "escalate", lambda t, esc: on_escalate(t, escalate(t, esc)))
        unless = step_guard.step_unless

        def watched(optimizer, bad) -> None:
            before = [p.detach().clone() for p in trainer.params]
            unless(optimizer, bad)
            applied[trainer.tries] = any(not torch.equal(a, p) for a, p in zip(before, trainer.params))

        monkeypatch.setattr(step_guard, "step_unless", watched)

    trainer, code, evs = run_in_process(s, tmp_path / "runs", monkeypatch, fault, prepare)
    trainer.applied = applied
    return trainer, code, evs


def _adam_steps(trainer) -> set[float]:
    opt = step_guard.inner(trainer.optimizer)
    return {float(st["step"]) for st in opt.state.values()}


@pytest.mark.parametrize("skip,on_device", [(True, True), (True, False), (False, True)],
                         ids=["device-flags", "sync-per-step", "control-skip-off"])
def test_N4_a_single_spike_step_is_skipped_on_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         skip: bool, on_device: bool) -> None:
    if not on_device:  # as with bitsandbytes' 8-bit optimizers: each step's flags are read at once
        monkeypatch.setattr(step_guard, "skips_on_device", lambda *a: False)
    trainer, code, evs = _run(tmp_path, monkeypatch, "spike@try:14:x50", spike_skip=skip)
    assert code == 0 and trainer.step == 20 and trainer.device_guard == on_device
    spikes = alerts(evs, "spike")
    per_step = 4 * 32
    if skip:
        assert len(spikes) == 1 and spikes[0]["severity"] == "warning" and spikes[0]["step"] == 14
        assert spikes[0]["skipped"] == 1 and "skipped" in spikes[0]["message"]
        assert spikes[0]["loss"] > 20 * spikes[0]["threshold"] / 3 > 0  # 50x the level, threshold <= ~3x+
        assert trainer.tries == 21
        if on_device:  # that attempt left the weights as they were, and it was the only one
            assert not trainer.applied[14] and all(trainer.applied[a] for a in trainer.applied if a != 14)
        assert _adam_steps(trainer) == {20.0}  # the optimizer counted 20 steps in 21 attempts
        assert [e["tokens"] for e in evs if e["type"] == "metrics"][-1] == 20 * per_step  # its tokens came off
        losses = [e["train/loss"] for e in evs if e["type"] == "metrics"]
        assert max(losses[12:]) < losses[0]  # the spike never reached the logged loss
    else:  # control: the same spike trains (and the interval detector warns: the ladder's first rung)
        assert trainer.tries == 20 and trainer.applied[14] and _adam_steps(trainer) == {20.0}
        assert [a["step"] for a in spikes] == [14] and "skipped" not in spikes[0]["message"]


def test_N4_skipped_spikes_in_a_row_pause_without_rolling_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    import torch

    # spike_patience 2 logging intervals of one step: two skipped spikes in a row escalate
    trainer, code, evs = _run(tmp_path, monkeypatch, "spike@try:14-40:x50", spike_patience=2)
    spikes = alerts(evs, "spike")
    assert [a["severity"] for a in spikes] == ["warning", "error"] and spikes[-1]["step"] == 14
    assert "2 steps in a row from step 14 (each skipped)" in spikes[-1]["message"]
    assert code == 11 and trainer.step == 13 and trainer.tries == 15 and not alerts(evs, "rollback")
    assert not trainer.applied[14] and not trainer.applied[15] and _adam_steps(trainer) == {13.0}
    assert all(torch.isfinite(p).all() for p in trainer.params)
    saved = json.loads((Path([e for e in evs if e["type"] == "checkpoint"][-1]["path"]) /
                        "trainer_state.json").read_text())
    assert saved["step"] == 13 and saved["watchdogs"]["smooth"] > 50  # resuming after a look accepts the level


def test_N4_skipped_spikes_in_a_row_auto_roll_back_then_the_run_finishes(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, code, evs = _run(tmp_path, monkeypatch, "spike@try:14-15:x50", spike_patience=2, auto_rollback=True)
    roll = alerts(evs, "rollback")
    assert len(roll) == 1 and roll[0]["checkpoint"] == "step-000012" and roll[0]["multiplier"] == 0.5
    assert roll[0]["skipped_to"][1] > roll[0]["skipped_from"][1]  # the spiking batches are not trained again
    assert code == 0 and trainer.step == 20 and trainer.schedule.multiplier == 0.5
    assert not trainer.applied[14] and not trainer.applied[15]


def test_N4_a_manual_rollback_beats_a_pending_auto_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read after step 15 decides an automatic rollback, done before the next step; a user's rollback
    handled at the boundary in between wins and the automatic one is dropped with an alert."""
    sent: list[str] = []

    def user_rolls_back(trainer, outcome: str) -> str:
        if outcome == "rollback" and not sent:
            sent.append(runfolder.send_command(trainer.run, "rollback", step=4))
        return outcome

    trainer, code, evs = _run(tmp_path, monkeypatch, "spike@try:14-15:x50", on_escalate=user_rolls_back,
                              spike_patience=2, auto_rollback=True)
    acks = [e for e in evs if e["type"] == "control_ack" and e["id"] == sent[0]]
    assert acks and acks[0]["ok"] and acks[0]["checkpoint"] == "step-000004"
    assert [e["rollback_to"] for e in evs if e.get("rollback_to")] == ["step-000004"]  # one rollback, the user's
    dropped = [a for a in alerts(evs, "rollback") if a.get("dropped")]
    assert len(dropped) == 1 and dropped[0]["dropped"] == "spike" and "step-000004" in dropped[0]["message"]
    assert not [a for a in alerts(evs, "rollback") if "auto-rollback" in a["message"]]
    assert trainer.schedule.multiplier == 1.0  # the automatic one's LR x0.5 was not applied
    assert code == 0 and trainer.step == 20 and trainer.branch == 1


def test_N4_an_armed_skip_adds_no_sync_between_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The threshold is refilled on the device at each log and the flag read with the others at the next one:
    with the skip armed and a spike skipped, steps that do not log still read nothing back."""
    import torch
    from accelerate.state import AcceleratorState

    from engine.run.trainer import Trainer
    from test_performance_syncs import LOG_EVERY, _count_syncs

    monkeypatch.setenv("LLMW_FAULT", "spike@try:62:x50")
    monkeypatch.setattr(watchdogs, "_fired", set())
    AcceleratorState._reset_state(reset_partial_state=True)
    threads = torch.get_num_threads()
    s = tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": 70}, log={"every": LOG_EVERY},
                  checkpoint={"every": 0})
    trainer = Trainer(job.create(s, tmp_path / "runs"), s)
    counts = _count_syncs(monkeypatch, trainer)
    try:
        assert trainer.run_job() == 0
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
    assert math.isfinite(trainer.skip_value) and trainer.tries == 71  # armed, and one step skipped
    spikes = alerts(runfolder.read_events(trainer.run)[0], "spike")
    assert [(a["step"], a["skipped"]) for a in spikes] == [(62, 1)]
    quiet = [k for k in range(70) if k % LOG_EVERY]
    assert {k: counts[k] for k in quiet} == {k: 0 for k in quiet}
    assert counts[65] > 0  # the read that found it


@pytest.mark.parametrize("window", ["restored", "control-dropped"])
def test_N6_the_detector_window_survives_a_real_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       window: str) -> None:
    """A run stopped at step 12 and resumed (`train --resume` in this process): a spike two steps later is skipped as
    in an uninterrupted run, because the window comes back from the checkpoint; control: with the checkpoint's
    window dropped, the resumed detector is not armed and the same spike trains."""
    from engine.run.trainer import Trainer
    from run_helpers import in_process_trainer, stopped_in_process

    s = tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": 20}, checkpoint={"every": 4, "keep": 20})
    run = stopped_in_process(s, tmp_path / "runs", 12)
    trainer = Trainer(run, s, resume=True)
    if window == "control-dropped":
        load = trainer._load

        def load_without_window(info) -> None:
            load(info)
            trainer.watchdogs.state = Watchdogs(total_steps=20, warmup_steps=2).state
            trainer.arm_skip()

        trainer._load = load_without_window
    monkeypatch.setenv("LLMW_FAULT", "spike@step:14:x50")
    monkeypatch.setattr(watchdogs, "_fired", set())
    with in_process_trainer():
        assert trainer.run_job() == 0
    spikes = [a for a in alerts(runfolder.read_events(run)[0], "spike") if a["step"] > 12]
    if window == "restored":
        assert [(a["step"], a.get("skipped")) for a in spikes] == [(14, 1)], spikes
    else:
        assert not any(a.get("skipped") for a in spikes), spikes
