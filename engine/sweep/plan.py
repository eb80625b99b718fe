"""Making a sweep: the folder with its base spec, sweep.json and the empty study; the slots (one per GPU); the cost.

The base spec is the user's with the sweep's own settings folded in, so every trial's spec.toml reruns on its
own: `train.max_steps` from `--steps`, and evaluation often enough for the pruner to see the metric (five times a
trial when the spec evaluates never or less than once). The time per step for the cost is taken from the newest
finished run in the runs folder with the same fingerprint (model, data, batch: what sets the step time).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from engine import spec as spec_mod
from engine.errors import UserError
from engine.estimate.request import request_from_spec
from engine.estimate.sweep_cost import SweepCost, sweep_cost
from engine.runfolder import folder as runfolder
from engine.sweep import space, study as studies
from engine.sweep import state as sweep_state
from engine.sweep.state import BASE_SPEC, METRICS, PRUNERS, SweepState


def base_spec(spec: spec_mod.RunSpec, steps: int | None, metric: str) -> spec_mod.RunSpec:
    data = spec.to_dict()
    if steps is not None:
        if steps < 1:
            raise UserError(f"--steps: must be positive, got {steps}", field="steps")
        data["train"]["max_steps"] = steps
    total = data["train"]["max_steps"]
    if metric.startswith("eval/"):
        if not total:
            raise UserError("the trials' length is set in epochs: give --steps K so the pruner can compare them "
                            "step for step", field="steps")
        every = data["eval"]["every"]
        if not every or every > total // 2:
            data["eval"]["every"] = max(1, total // 5)
        if data["data"]["val_fraction"] <= 0:
            raise UserError(f"--metric {metric} needs held-out data: data.val_fraction is 0 (set it, or use "
                            f"--metric train/loss)", field="metric")
    return spec_mod.from_dict(data)


def gpu_slots(spec: spec_mod.RunSpec) -> tuple[str, ...]:
    """CUDA_VISIBLE_DEVICES of each slot: one per GPU for one-process trials; none (one slot) otherwise."""
    if spec.distributed.num_processes > 1:
        return ()
    from engine.machine.probe import probe_gpus

    gpus, _, _, _ = probe_gpus()
    return tuple(str(g.index) for g in gpus) if len(gpus) > 1 else ()


def create(spec: spec_mod.RunSpec, space_texts: list[str], *, runs_dir: Path, trials: int, metric: str = "eval/loss",
           steps: int | None = None, pruner: str = "median", parallel: int | None = None,
           step_sleep: float = 0.0) -> Path:
    """A new sweep folder, ready for its driver."""
    if trials < 1:
        raise UserError(f"--trials: must be at least 1, got {trials}", field="trials")
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}", field="metric")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}", field="pruner")
    base = base_spec(spec, steps, metric)
    params = space.parse_space(space_texts, base.to_dict())
    gpus = gpu_slots(base)
    if parallel is not None:  # fewer trials at a time than GPUs still pins each to one; more than GPUs: none pinned
        gpus = gpus[:parallel] if len(gpus) >= parallel else ()
    st = SweepState(name=base.name, trials=trials, space=tuple(p.text() for p in params), metric=metric,
                    steps=base.train.max_steps or None, pruner=pruner, parallel=len(gpus) or parallel or 1,
                    gpus=gpus, seed=base.seed, step_sleep=step_sleep)
    folder = runfolder.create_run(Path(runs_dir), f"{base.name}-sweep", spec_mod.to_toml(base))
    (folder / runfolder.SPEC).rename(folder / BASE_SPEC)  # not a run: `runs` and attach must not take it for one
    sweep_state.write(folder, st)
    studies.open_study(folder, st, first_eval=base.eval.every or None, create=True)
    return folder


def measured_step_seconds(spec: spec_mod.RunSpec, runs_dir: Path) -> tuple[float | None, float, str]:
    """(seconds a step, seconds of start-up, where from) of the newest finished run with this spec's fingerprint:
    the median train/step_ms, and its first to last event less its steps (data and model preparation; the
    interpreter's own start is before the first event and not in it). (None, 0, "") if there is none."""
    want = spec.fingerprint()
    if not Path(runs_dir).is_dir():
        return None, 0.0, ""
    folders = [p for p in Path(runs_dir).iterdir() if p.is_dir()]
    folders += [run for f in folders if sweep_state.is_sweep(f) for run in f.iterdir() if run.is_dir()]  # trials
    for run in sorted(folders, key=lambda p: p.name, reverse=True)[:300]:
        try:
            other = spec_mod.from_dict(tomllib.loads((run / runfolder.SPEC).read_text(encoding="utf-8")))
        except (OSError, ValueError, UserError):
            continue
        if other.fingerprint() != want or runfolder.read_status(run).get("state") != "done":
            continue
        evs = runfolder.read_events(run)[0]
        ms = [e["train/step_ms"] for e in evs if e["type"] == "metrics"]
        if ms:
            step_s = sorted(ms)[len(ms) // 2] / 1000
            start = max(0.0, evs[-1]["t"] - evs[0]["t"] - other.train.max_steps * step_s) if other.train.max_steps else 0.0
            return step_s, start, f"measured in run {run.name}"
    return None, 0.0, ""


def cost(folder: Path, runs_dir: Path | None = None) -> SweepCost:
    """The sweep's cost: its own measured step time once a trial has run, else a matching finished run's."""
    st = sweep_state.read(folder)
    if st is None:
        raise UserError(f"{folder} is not a sweep folder", field="sweep")
    base = spec_mod.load(Path(folder) / BASE_SPEC)
    seconds, start, source = (st.step_ms / 1000, st.start_s or 0.0, "measured in this sweep") if st.step_ms else \
        measured_step_seconds(base, runs_dir or Path(folder).parent)
    tokens = request_from_spec(base).tokens_per_step()
    return sweep_cost(st.trials, base.train.max_steps, tokens, parallel=len(st.gpus) or st.parallel,
                      step_seconds=seconds, source=source, start_seconds=start)


def trial_curves(folder: Path, st: SweepState, key: str = "eval/loss") -> dict[int, list[tuple[int, float]]]:
    """Each trial's (step, value) points of `key` from its run's events, for the overlaid chart."""
    kind = "metrics" if key.startswith("train/") else "eval"
    curves: dict[int, list[tuple[int, float]]] = {}
    for rec in st.records:
        run = Path(folder) / rec.run if rec.run else None
        if run is None or not run.is_dir():
            continue
        curves[rec.number] = [(e["step"], e[key]) for e in runfolder.read_events(run)[0]
                              if e["type"] == kind and isinstance(e.get(key), (int, float))]
    return curves


def summary(folder: Path) -> dict[str, Any]:
    """sweep.json as the CLI's --json prints it, with the best trial."""
    st = sweep_state.read(folder)
    if st is None:
        raise UserError(f"{folder} is not a sweep folder", field="sweep")
    best = st.best()
    return {**json.loads(json.dumps(st.to_dict())), "path": str(folder), "id": Path(folder).name,
            "finished": len(st.counted()), "best": None if best is None else
            {"number": best.number, "value": best.value, "params": best.params, "run": best.run}}
