"""The sweep's pure parts: the --space parser and its checks against the spec, sweep.json, the sweep's cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import UserError
from engine.estimate.sweep_cost import sweep_cost
from engine.sweep import space
from engine.sweep import state as sweep_state
from engine.sweep.state import SweepState, TrialRecord
from run_helpers import make_corpus, tiny_spec


@pytest.fixture()
def base(tmp_path: Path) -> dict:
    return tiny_spec(make_corpus(tmp_path, lines=50)).to_dict()


def test_each_form_parses() -> None:
    assert space.parse("train.lr=log(1e-5,1e-3)") == space.Param("train.lr", "log", 1e-5, 1e-3)
    assert space.parse("model.dropout = uniform(0, 0.2)") == space.Param("model.dropout", "uniform", 0.0, 0.2)
    assert space.parse("train.warmup_steps=int(0,100)") == space.Param("train.warmup_steps", "int", 0, 100)
    p = space.parse('train.optimizer=choice("adamw", "sgd")')
    assert p.choices == ("adamw", "sgd")
    assert space.parse("options.lora_rank=choice(8,16,32)").choices == (8, 16, 32)


@pytest.mark.parametrize("text, said", [
    ("train.lr=log(0,1e-3)", "a > 0"),
    ("train.lr=uniform(1e-3,1e-5)", "below the high"),
    ("train.lr=normal(1,2)", "KEY=log(a,b)"),
    ("train.batch_size=int(1.5,8)", "whole numbers"),
    ("train.lr=log(1e-5)", "two numbers"),
    ("options.lora_rank=choice(8,8)", "twice"),
    ("options.lora_rank=choice(adamw)", "quoted text"),
])
def test_bad_forms_are_refused_with_the_fix(text: str, said: str) -> None:
    with pytest.raises(UserError, match=said.replace("(", r"\(").replace(")", r"\)")):
        space.parse(text)


def test_space_is_checked_against_the_spec(base: dict) -> None:
    with pytest.raises(UserError, match=r"train has no setting 'lrr'.*did you mean train.lr"):
        space.parse_space(["train.lrr=log(1e-5,1e-3)"], base)
    with pytest.raises(UserError, match="not valid: train.batch_size"):  # a bound the spec refuses
        space.parse_space(["train.batch_size=int(0,8)"], base)
    with pytest.raises(UserError, match="given twice"):
        space.parse_space(["train.lr=log(1e-5,1e-3)", "train.lr=uniform(0.1,0.2)"], base)
    with pytest.raises(UserError, match="at least one --space"):
        space.parse_space([], base)
    params = space.parse_space(["train.lr=log(1e-5,1e-3)", "options.lora_rank=choice(8,16)"], base)
    assert [p.text() for p in params] == ["train.lr=log(1e-05,0.001)", "options.lora_rank=choice(8, 16)"]
    assert [space.parse(p.text()) for p in params] == list(params)  # sweep.json's text parses back the same


def test_apply_sets_any_key_and_validates(base: dict) -> None:
    s = space.apply(base, {"train.lr": 1e-4, "options.lora_rank": 8, "model.dropout": 0.1})
    assert (s.train.lr, s.options["lora_rank"], s.model.dropout) == (1e-4, 8, 0.1)
    with pytest.raises(UserError, match="model.dropout"):
        space.apply(base, {"model.dropout": 1.5})


def test_suggest_goes_through_optuna_distributions() -> None:
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = [space.parse("train.lr=log(1e-5,1e-3)"), space.parse("train.warmup_steps=int(0,10)"),
              space.parse("options.lora_rank=choice(8,16,32)")]
    for _ in range(20):
        trial = study.ask()
        lr, warm, rank = (p.suggest(trial) for p in params)
        assert 1e-5 <= lr <= 1e-3 and isinstance(warm, int) and 0 <= warm <= 10 and rank in (8, 16, 32)
        study.tell(trial, lr)
    assert isinstance(study.trials[0].distributions["train.lr"], optuna.distributions.FloatDistribution)
    assert study.trials[0].distributions["train.lr"].log


def test_sweep_json_round_trip_and_counting(tmp_path: Path) -> None:
    st = SweepState(name="t", trials=3, space=("train.lr=log(1e-05,0.001)",), pid=None)
    st = st.with_record(TrialRecord(0, state="complete", value=2.5, params={"train.lr": 1e-4}))
    st = st.with_record(TrialRecord(1, state="fail", counted=False))
    st = st.with_record(TrialRecord(2, state="pruned", pruned_at=10))
    st = st.with_record(TrialRecord(3, state="complete", value=2.1))
    sweep_state.write(tmp_path, st)
    back = sweep_state.read(tmp_path)
    assert back is not None and back.records == st.records and back.space == st.space
    assert [r.number for r in back.counted()] == [0, 2, 3]  # the killed one does not count
    assert back.best().number == 3  # type: ignore[union-attr]
    assert back.state == "running"  # no driver pid recorded yet: not taken for a crash
    import os

    sweep_state.write(tmp_path, sweep_state.owned_by_me(back, os.getpid()))
    assert sweep_state.read(tmp_path).live  # type: ignore[union-attr]
    gone = sweep_state.SweepState(**{**back.__dict__, "pid": 2 ** 22 + 7, "pid_start": "1"})
    sweep_state.write(tmp_path, gone)
    assert sweep_state.read(tmp_path).state == "crashed"  # type: ignore[union-attr]


def test_cost_is_trials_times_steps_times_step_time() -> None:
    c = sweep_cost(8, 500, 2048, parallel=2, step_seconds=0.2, source="measured", start_seconds=10)
    assert c.total_steps() == 4000 and c.total_tokens() == 4000 * 2048
    assert c.seconds() == pytest.approx(4 * (500 * 0.2 + 10))
    assert "at most 7 min, 2 at a time" in c.describe()
    unknown = sweep_cost(8, 500, 2048)
    assert unknown.seconds() is None and "not measured yet" in unknown.describe()


@pytest.mark.parametrize("name, kind", [("median", "MedianPruner"), ("hyperband", "HyperbandPruner"),
                                        ("none", "NopPruner")])
def test_each_pruner_builds(name: str, kind: str) -> None:
    pytest.importorskip("optuna")
    from engine.sweep import study

    built = study.pruner(SweepState(name="t", trials=8, space=(), pruner=name, steps=100), first_eval=10)
    assert type(built).__name__ == kind
    if name == "median":
        assert built._n_startup_trials == 2  # a quarter of the sweep finishes before anything is pruned
