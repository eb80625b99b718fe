"""Making a sweep, without training: the folder, the base spec the trials share, one slot per GPU with its
CUDA_VISIBLE_DEVICES, the cost from a finished run of the same fingerprint, and refusals said before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import spec as spec_mod
from engine.errors import UserError
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.sweep import plan
from engine.sweep import state as sweep_state
from engine.sweep.driver import Driver
from run_helpers import make_corpus, tiny_spec
from tui.cli import main

SPACE = ["train.lr=log(1e-4,1e-2)", "model.dropout=uniform(0,0.1)"]


@pytest.fixture()
def spec(tmp_path: Path) -> spec_mod.RunSpec:
    return tiny_spec(make_corpus(tmp_path, lines=200))


def test_create_writes_the_folder_and_the_study(spec: spec_mod.RunSpec, tmp_path: Path) -> None:
    import optuna

    folder = plan.create(spec, SPACE, runs_dir=tmp_path / "runs", trials=5, steps=50)
    st = sweep_state.read(folder)
    assert st is not None and st.trials == 5 and st.steps == 50 and st.space == (
        "train.lr=log(0.0001,0.01)", "model.dropout=uniform(0,0.1)")
    base = spec_mod.load(folder / "base.toml")
    assert base.train.max_steps == 50 and base.eval.every == 10  # the spec never evaluated: five times a trial
    assert not (folder / runfolder.SPEC).exists()  # a sweep is not a run: `runs` and attach never take it for one
    assert runfolder.list_runs(tmp_path / "runs") == []
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.trials == []


def test_one_slot_per_gpu_each_with_its_device(spec: spec_mod.RunSpec, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    folder = plan.create(spec, SPACE, runs_dir=tmp_path / "runs", trials=4)
    st = sweep_state.read(folder)
    assert st is not None and st.gpus == ("0", "1") and st.parallel == 2
    driver = Driver(folder)
    assert [driver.env(i) for i in range(2)] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    one = plan.create(spec, SPACE, runs_dir=tmp_path / "runs", trials=4, parallel=1)
    assert sweep_state.read(one).gpus == ("0",)  # type: ignore[union-attr]
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "none")
    cpu = plan.create(spec, SPACE, runs_dir=tmp_path / "runs", trials=4)
    assert sweep_state.read(cpu).gpus == () and Driver(cpu).env(0) is None  # type: ignore[union-attr]


def test_refusals_come_before_any_folder(spec: spec_mod.RunSpec, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for kwargs, said in [({"trials": 0}, "--trials"), ({"trials": 2, "metric": "accuracy"}, "--metric"),
                         ({"trials": 2, "pruner": "asha"}, "--pruner")]:
        with pytest.raises(UserError, match=said):
            plan.create(spec, SPACE, runs_dir=runs, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="has no setting"):
        plan.create(spec, ["train.lrr=log(1e-4,1e-2)"], runs_dir=runs, trials=2)
    epochs = spec_mod.from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "max_steps": 0}})
    with pytest.raises(UserError, match="--steps"):
        plan.create(epochs, SPACE, runs_dir=runs, trials=2)
    assert not runs.exists()


def test_dry_run_cost_uses_a_finished_run_of_the_same_fingerprint(spec: spec_mod.RunSpec, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    other_lr = spec_mod.from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "lr": 1e-2}})
    run = runfolder.create_run(runs, "t", spec_mod.to_toml(other_lr))  # another LR: the same step time
    log = ev.EventLog(run)
    for step in (10, 20, 30):
        log.emit(ev.Metrics.from_keys(t=1000.0 + step, step=step, epoch=0.1, tokens=step * 128, eta_s=1.0, branch=0,
                                      **{"train/loss": 3.0, "train/lr": 1e-2, "train/grad_norm": 1.0,
                                         "train/tok_per_s": 1e4, "train/step_ms": 40.0 + step, "train/mfu": None,
                                         "train/loss_smooth": 3.0}))
    log.close()
    runfolder.write_status(run, {"state": "done", "pid": 1, "step": 30})
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec_mod.to_toml(spec))
    args = ["--runs-dir", str(runs), "sweep", str(spec_file), "--trials", "6", "--dry-run", "--json"]
    assert main([*args, *[a for s in SPACE for a in ("--space", s)]]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["trials"] == 6 and cost["steps"] == 30 and cost["step_seconds"] == pytest.approx(0.06)
    # start-up: its first to last event (20 s) less its 30 steps at 60 ms
    assert cost["tokens_per_step"] == 4 * 32 and cost["start_seconds"] == pytest.approx(20 - 30 * 0.06)
    assert cost["seconds"] == pytest.approx(6 * (30 * 0.06 + 20 - 30 * 0.06))
    assert run.name in cost["source"]
    assert not [p for p in runs.iterdir() if sweep_state.is_sweep(p)]  # a dry run starts nothing
