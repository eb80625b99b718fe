"""The Optuna side of a sweep: the study in <sweep>/study.db (SQLite, so optuna-dashboard opens it), its sampler and
pruner rebuilt from sweep.json, and the few calls the driver makes (ask, report, should_prune, tell).

Optuna keeps neither sampler nor pruner in its storage, so both are rebuilt from the sweep's settings on every
start: the same study resumes with the same rules. The median pruner waits for `startup_trials` finished trials
before it prunes (a quarter of the sweep, 1 to 5), hyperband's budget is the trial's steps.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.sweep.state import STUDY_FILE, STUDY_NAME, SweepState


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("the sweep needs Optuna: pip install 'optuna>=4'", field="sweep") from None
    optuna.logging.set_verbosity(logging.WARNING)  # one line a trial in the sweep's own log is enough
    return optuna


def storage_url(folder: Path) -> str:
    return f"sqlite:///{(Path(folder) / STUDY_FILE).resolve()}"


def startup_trials(trials: int) -> int:
    return max(1, min(5, trials // 4))


def pruner(st: SweepState, first_eval: int | None) -> Any:
    optuna = _optuna()
    if st.pruner == "none":
        return optuna.pruners.NopPruner()
    if st.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, first_eval or 1),
                                              max_resource=st.steps or "auto", reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(st.trials), n_warmup_steps=0)


def open_study(folder: Path, st: SweepState, *, first_eval: int | None = None, create: bool = False) -> Any:
    """The sweep's study (created once, then loaded), with its sampler and pruner."""
    optuna = _optuna()
    sampler = optuna.samplers.TPESampler(seed=st.seed, n_startup_trials=max(2, min(10, st.trials // 2)))
    if create:
        return optuna.create_study(storage=storage_url(folder), study_name=STUDY_NAME, direction=st.direction,
                                   sampler=sampler, pruner=pruner(st, first_eval))
    return optuna.load_study(storage=storage_url(folder), study_name=STUDY_NAME, sampler=sampler,
                             pruner=pruner(st, first_eval))


def trial_handle(study: Any, number: int) -> Any:
    """A live `optuna.Trial` for trial `number` (also one asked by an earlier driver process)."""
    optuna = _optuna()
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return optuna.trial.Trial(study, frozen._trial_id)


def state_of(study: Any, number: int) -> str:
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return frozen.state.name.lower() if frozen is not None else "missing"


def open_numbers(study: Any) -> list[int]:
    """Trials asked but not told: running in Optuna's eyes."""
    optuna = _optuna()
    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    return [t.number for t in study.get_trials(deepcopy=False, states=states)]


def report(trial: Any, points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Report the new (step, value) points not yet in the study; returns those reported."""
    known = trial.study._storage.get_trial(trial._trial_id).intermediate_values
    new = [(s, v) for s, v in points if s not in known and math.isfinite(v)]
    for step, value in new:
        trial.report(value, step)
    return new


def tell(study: Any, number: int, state: str, value: float | None = None) -> None:
    """Finish trial `number` as complete (with `value`), pruned or fail; a trial already finished is left alone."""
    optuna = _optuna()
    if state_of(study, number) not in ("running", "waiting"):
        return
    kind = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
            "fail": optuna.trial.TrialState.FAIL}[state]
    study.tell(number, value if state == "complete" else None, state=kind)
