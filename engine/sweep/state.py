"""sweep.json: a sweep's settings and its trials as readers see them, rewritten atomically by the sweep's driver.

The sweep folder holds `base.toml` (the spec every trial starts from), `study.db` (Optuna's SQLite storage: the
study of record, which optuna-dashboard opens), `sweep.json` (this file), `sweep.log`, and one ordinary run folder
per trial. sweep.json mirrors the study for the CLI and the TUI (no optuna import, no database read to draw a
table) and records what the study cannot: which run folder belongs to which trial, and a prune decided but not
yet told to Optuna, so a driver killed in between resumes without counting a trial twice.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.processes import pid_alive, pid_start_time
from engine.runfolder.status import write_text_atomic

SWEEP_FILE, STUDY_FILE, BASE_SPEC, LOG = "sweep.json", "study.db", "base.toml", "sweep.log"
STUDY_NAME = "sweep"
METRICS = ("eval/loss", "eval/ppl", "train/loss")
PRUNERS = ("median", "hyperband", "none")
# a trial's state: Optuna's names, lower-case, and `waiting` (asked, its run not started yet)
TRIAL_STATES = ("waiting", "running", "complete", "pruned", "fail")
SWEEP_STATES = ("running", "done", "stopped", "failed", "crashed")


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str = "waiting"
    params: dict[str, Any] = field(default_factory=dict)
    run: str = ""  # the run folder's name, inside the sweep folder
    value: float | None = None  # the objective: the metric at the trial's end
    best: float | None = None  # the lowest reported value of the metric
    pruned_at: int | None = None  # the step at which the pruner stopped it
    prune_pending: bool = False  # pruning decided, stop sent; Optuna not yet told (a resume tells it)
    counted: bool = True  # False: failed because the sweep was killed while it ran; a new trial replaces it
    gpu: str | None = None  # the CUDA_VISIBLE_DEVICES it ran with
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "pruned", "fail")


@dataclass(frozen=True)
class SweepState:
    name: str
    trials: int  # how many finished trials the sweep wants
    space: tuple[str, ...]  # the --space texts, parsed again on resume
    metric: str = "eval/loss"
    direction: str = "minimize"
    steps: int | None = None  # train.max_steps of every trial (None: the spec's)
    pruner: str = "median"
    parallel: int = 1
    gpus: tuple[str, ...] = ()  # one slot per entry: its CUDA_VISIBLE_DEVICES; empty = one slot without
    seed: int = 0
    step_sleep: float = 0.0  # seconds each trial sleeps after a step (tests: a trial long enough to interrupt)
    state: str = "running"
    pid: int | None = None
    pid_start: str | None = None
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    message: str = ""
    step_ms: float | None = None  # measured time per optimizer step (the first finished trials' median)
    start_s: float | None = None  # measured start-up of a trial (imports, data, model): its wall time less its steps
    records: tuple[TrialRecord, ...] = ()

    def counted(self) -> list[TrialRecord]:
        """The finished trials that count towards `trials` (not those a killed sweep left behind)."""
        return [r for r in self.records if r.finished and r.counted]

    def best(self) -> TrialRecord | None:
        done = [r for r in self.records if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
        return min(done, key=lambda r: r.value if self.direction == "minimize" else -r.value) if done else None

    def record(self, number: int) -> TrialRecord | None:
        return next((r for r in self.records if r.number == number), None)

    def with_record(self, rec: TrialRecord) -> SweepState:
        others = [r for r in self.records if r.number != rec.number]
        return replace(self, records=tuple(sorted([*others, rec], key=lambda r: r.number)))

    @property
    def live(self) -> bool:
        return self.state == "running" and pid_alive(self.pid, self.pid_start)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["records"] = [asdict(r) for r in self.records]
        return d


def from_dict(d: dict[str, Any]) -> SweepState:
    d = dict(d)
    records = tuple(TrialRecord(**r) for r in d.pop("records", []))
    for key in ("space", "gpus"):
        d[key] = tuple(d.get(key, ()))
    return SweepState(**d, records=records)


def read(folder: Path) -> SweepState | None:
    """The sweep's state (None: not a sweep folder, or unreadable); a running sweep whose driver is gone reads
    as crashed."""
    try:
        state = from_dict(json.loads((Path(folder) / SWEEP_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    if state.state == "running" and state.pid is not None and not pid_alive(state.pid, state.pid_start):
        state = replace(state, state="crashed", message="the sweep's driver is gone: resume it with "
                        f"`llm-wizard sweep --resume {Path(folder).name}`")
    return state


def write(folder: Path, state: SweepState) -> SweepState:
    state = replace(state, updated=time.time())
    write_text_atomic(Path(folder) / SWEEP_FILE, json.dumps(state.to_dict(), indent=1))
    return state


def owned_by_me(state: SweepState, pid: int) -> SweepState:
    return replace(state, pid=pid, pid_start=pid_start_time(pid), state="running", message="")


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / SWEEP_FILE).is_file()


def list_sweeps(runs_dir: Path) -> list[tuple[Path, SweepState]]:
    """Every sweep folder in `runs_dir`, oldest first."""
    if not Path(runs_dir).is_dir():
        return []
    found = []
    for p in sorted(Path(runs_dir).iterdir(), key=lambda p: p.name):
        if p.is_dir() and is_sweep(p) and (s := read(p)) is not None:
            found.append((p, s))
    return found
