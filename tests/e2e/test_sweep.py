"""Sweeps end to end on the CPU: a detached driver, each trial a detached run in the sweep folder.

A 4-trial, 2-parameter sweep with the median pruner finds a better eval loss than its worst trial, and Optuna's
own API reads the study back from study.db. A sweep whose driver is SIGKILLed twice (once with its trial left
running, once with the trial's job killed too) and resumed each time finishes exactly N counted trials, each
with one run folder, the killed trial resumed from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.processes import pid_alive
from engine.runfolder import folder as runfolder
from engine.sweep import state as sweep_state
from run_helpers import events, make_corpus, wait_for

pytestmark = pytest.mark.slow

SPEC = """name = "t"
[data]
path = "{corpus}"
val_fraction = 0.05
[tokenizer]
kind = "byte"
[model]
arch = "gpt2"
size = "tiny"
layers = 1
width = 32
heads = 2
[train]
seq_len = 32
batch_size = 4
lr = 3e-3
max_steps = 30
warmup_steps = 2
threads = 1
[eval]
every = 10
batches = 4
[checkpoint]
every = 10
keep = 2
[log]
every = 5
"""


def _cli(*args: str, runs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_WIZARD_RUNS": str(runs)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(corpus=make_corpus(tmp_path)))
    return path


def _start(tmp_path: Path, *extra: str) -> tuple[Path, int]:
    runs = tmp_path / "runs"
    res = _cli("sweep", str(_spec(tmp_path)), "--json", *extra, runs=runs)
    assert res.returncode == 0, res.stderr
    started = json.loads(res.stdout)
    return Path(started["path"]), started["pid"]


def _wait_done(folder: Path, pid: int, timeout: float = 280) -> sweep_state.SweepState:
    wait_for(lambda: not pid_alive(pid), timeout, "the sweep's driver to exit")  # not our child: the CLI's
    st = sweep_state.read(folder)
    assert st is not None and st.state == "done", (st, (folder / "sweep.log").read_text())
    return st


def _study(folder: Path):
    import optuna

    return optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'study.db'}")


def test_tiny_sweep_prunes_and_finds_a_better_loss_than_its_worst_trial(tmp_path: Path) -> None:
    import optuna

    folder, pid = _start(tmp_path, "--trials", "4", "--space", "train.lr=log(1e-3,1)",
                         "--space", "train.warmup_steps=int(0,10)", "--pruner", "median", "--step-sleep", "0.1")
    st = _wait_done(folder, pid)
    study = _study(folder)  # Optuna's own API, from the SQLite file alone
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE,
                                                               optuna.trial.TrialState.PRUNED}
    assert all(set(t.params) == {"train.lr", "train.warmup_steps"} for t in trials)
    # every trial reported its eval loss at the eval steps; the worst of them lost to the best trial's value
    assert all(t.intermediate_values and set(t.intermediate_values) <= {10, 20, 30} for t in trials)
    worst = max(t.value if t.value is not None else max(t.intermediate_values.values()) for t in trials)
    assert study.best_value < worst
    assert st.best().value == pytest.approx(study.best_value)  # type: ignore[union-attr]
    for rec in st.records:  # each trial an ordinary run folder: spec.toml with its sampled values, events
        run = folder / rec.run
        assert f"lr = {rec.params['train.lr']!r}" in (run / runfolder.SPEC).read_text()
        final = runfolder.read_status(run)
        if rec.state == "pruned":  # stopped through its control channel (unless it finished first)
            assert rec.pruned_at is not None and final["state"] in ("stopped", "done")
            if final["state"] == "stopped":
                assert final["step"] < 30 and any(e["cmd"] == "stop" for e in events(run, "control_ack"))
        else:
            assert final["state"] == "done" and final["step"] == 30
    pruned = [r for r in st.records if r.state == "pruned"]
    assert pruned, [(r.number, r.params, r.best) for r in st.records]  # lr up to 1 diverges: seed 0 samples 0.66
    assert any(runfolder.read_status(folder / r.run)["state"] == "stopped" for r in pruned)
    assert st.step_ms is not None and st.step_ms > 0  # the cost's time per step, measured
    show = _cli("sweep", "--show", folder.name, "--text", runs=folder.parent)
    assert show.returncode == 0 and f"best: trial {st.best().number}" in show.stdout  # type: ignore[union-attr]
    listed = _cli("runs", runs=folder.parent)
    assert folder.name in listed.stdout and "4/4" in listed.stdout


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 30, f"process {pid} to die")


def _running_trial(folder: Path, number: int, step: int) -> Path:
    def running() -> Path | None:
        st = sweep_state.read(folder)
        rec = st.record(number) if st else None
        if rec is None or not rec.run:
            return None
        status = runfolder.read_status(folder / rec.run)
        return folder / rec.run if status.get("state") == "running" and status.get("step", 0) >= step else None

    return wait_for(running, 240, f"trial {number} at step {step}")


def test_a_killed_sweep_resumes_and_finishes_exactly_n_trials(tmp_path: Path) -> None:
    import optuna

    n = 3
    folder, pid = _start(tmp_path, "--trials", str(n), "--space", "train.lr=log(1e-3,1e-2)",
                         "--space", "model.dropout=uniform(0,0.1)", "--pruner", "none", "--step-sleep", "0.1")
    # 1: the driver dies, its trial's run goes on; the resumed driver follows that same run to its end
    first = _running_trial(folder, 0, 5)
    _kill(pid)
    assert sweep_state.read(folder).state == "crashed"  # type: ignore[union-attr]
    res = _cli("sweep", "--resume", folder.name, "--json", runs=folder.parent)
    assert res.returncode == 0, res.stderr
    pid = json.loads(res.stdout)["pid"]
    # 2: the driver and the trial's job both die after a checkpoint; the resumed driver resumes that run
    second = _running_trial(folder, 1, 15)
    _kill(pid)
    job_pid = runfolder.read_status(second)["pid"]
    os.kill(job_pid, signal.SIGKILL)
    wait_for(lambda: runfolder.read_status(second).get("state") == "crashed", 60, "the trial's job to be gone")
    res = _cli("sweep", "--resume", folder.name, "--json", runs=folder.parent)
    assert res.returncode == 0, res.stderr
    st = _wait_done(folder, json.loads(res.stdout)["pid"])

    trials = _study(folder).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * n  # none twice, none failed
    assert [r.number for r in st.counted()] == list(range(n))
    runs = [p for p in folder.iterdir() if (p / runfolder.SPEC).is_file()]
    assert sorted(p.name for p in runs) == sorted(r.run for r in st.records)  # one run folder per trial
    assert [e["step"] for e in events(first, "done")] == [30]  # followed, never restarted
    resumed = [e for e in events(second, "state") if e.get("resumed_from")]
    assert len(resumed) == 1 and resumed[0]["resumed_from"].startswith("step-000010")
    assert runfolder.read_status(second)["state"] == "done"
