"""Runs side by side, from their folders alone: what `llm-wizard runs compare` prints and the TUI overlays.

`summarize` folds a run's events into the numbers worth comparing (technique, steps, best eval loss, tokens/s,
peak memory) and its loss curves: the active branch, and each branch a rollback abandoned (kept, to show
whether the rescue helped). `spec_differences` lists the settings that differ between the runs' spec.toml.
"""

from __future__ import annotations

import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder

Point = tuple[float, float]
SAME_EVERYWHERE = ("name", "runs_dir")  # differ by construction, say nothing


@dataclass(frozen=True)
class Abandoned:
    """Loss points a rollback left behind: they ran after `origin_step`, to which the run went back."""
    origin_step: int
    train: list[Point]
    val: list[Point]


@dataclass
class RunSummary:
    id: str
    path: str
    technique: str
    state: str
    steps: int
    best_eval_loss: float | None = None
    best_step: int | None = None
    last_loss: float | None = None
    tok_per_s: float | None = None  # the median over the logged intervals
    peak_mem: int | None = None  # bytes: GPU memory on a GPU, resident memory on the CPU
    train: list[Point] = field(default_factory=list)  # the active branch
    val: list[Point] = field(default_factory=list)
    abandoned: list[Abandoned] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "technique": self.technique, "state": self.state,
                "steps": self.steps, "best_eval_loss": self.best_eval_loss, "best_step": self.best_step,
                "last_loss": self.last_loss, "tok_per_s": self.tok_per_s, "peak_mem": self.peak_mem,
                "branches_abandoned": len(self.abandoned)}


def fold(events: list[ev.Event]) -> tuple[list[Point], list[Point], list[Abandoned]]:
    """(train points, eval points, abandoned branches) of a run's events: a rollback (by a person, or automatic:
    the state event naming `rollback_to`) moves the points after its step to an abandoned branch."""
    train: list[Point] = []
    val: list[Point] = []
    abandoned: list[Abandoned] = []
    for e in events:
        if isinstance(e, ev.Metrics):
            train.append((float(e.step), e.train_loss))
        elif isinstance(e, ev.Eval):
            val.append((float(e.step), e.eval_loss))
        elif isinstance(e, ev.State) and e.rollback_to:
            cut = float(e.step)
            gone_t, gone_v = [p for p in train if p[0] > cut], [p for p in val if p[0] > cut]
            if gone_t or gone_v:
                abandoned.append(Abandoned(e.step, gone_t, gone_v))
            train, val = [p for p in train if p[0] <= cut], [p for p in val if p[0] <= cut]
    return train, val, abandoned


def summarize(run: Path) -> RunSummary:
    events = list(ev.read(run))
    info = runfolder.run_info(run)
    metrics = [e for e in events if isinstance(e, ev.Metrics)]
    evals = [e for e in events if isinstance(e, ev.Eval)]
    train, val, abandoned = fold(events)
    best = min(evals, key=lambda e: e.eval_loss) if evals else None
    mems = [m.sys_gpu_mem if m.sys_gpu_mem is not None else m.sys_rss for m in metrics]
    mems = [m for m in mems if m is not None]
    return RunSummary(
        id=info.id, path=str(run), technique=info.technique, state=info.state,
        steps=max([info.step or 0, *(int(m.step) for m in metrics)]),
        best_eval_loss=best.eval_loss if best else None, best_step=best.step if best else None,
        last_loss=metrics[-1].train_loss if metrics else None,
        tok_per_s=statistics.median(rates) if (rates := [m.train_tok_per_s for m in metrics
                                                          if m.train_tok_per_s is not None]) else None,
        peak_mem=max(mems) if mems else None, train=train, val=val, abandoned=abandoned)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _settings(run: Path) -> dict[str, Any]:
    """A run's settings, every one (defaults that spec.toml leaves out too), dotted; its raw TOML when the spec no
    longer validates here (its data moved away)."""
    from engine import spec as spec_mod
    from engine.errors import UserError

    try:
        raw = tomllib.loads((run / runfolder.SPEC).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    try:
        return _flat(spec_mod.from_dict(raw, base_dir=run).to_dict())
    except UserError:
        return _flat(raw)


def spec_differences(runs: list[Path]) -> dict[str, list[Any]]:
    """{dotted setting: its value in each run} for the settings that differ (a missing one is None)."""
    flats = [_settings(run) for run in runs]
    keys = sorted({k for f in flats for k in f} - set(SAME_EVERYWHERE))
    return {k: [f.get(k) for f in flats] for k in keys if len({repr(f.get(k)) for f in flats}) > 1}
