"""What a hyperparameter sweep costs: trials x steps x the time of one step, where that time is known.

Pure arithmetic like the rest of the estimator. The time per step is never guessed: it comes from a measurement
(a finished run of the same model, data and batch, or the sweep's own finished trials) or it is left unknown and
said so. Pruning only shortens a sweep, so the figure is an upper bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SweepCost:
    trials: int
    steps: int  # optimizer steps per trial
    tokens_per_step: int
    parallel: int = 1  # trials at a time (one per GPU)
    step_seconds: float | None = None  # measured; None: unknown until a trial has run
    source: str = ""  # where step_seconds comes from
    start_seconds: float = 0.0  # a trial's measured start-up (imports, data, model), when known

    def total_steps(self) -> int:
        return self.trials * self.steps

    def total_tokens(self) -> int:
        return self.total_steps() * self.tokens_per_step

    def seconds(self) -> float | None:
        """Wall-clock upper bound (no trial pruned), trials spread over `parallel` slots."""
        if self.step_seconds is None:
            return None
        rounds = -(-self.trials // max(1, self.parallel))
        return rounds * (self.steps * self.step_seconds + self.start_seconds)

    def describe(self) -> str:
        head = (f"{self.trials} trials x {self.steps:,} steps = {self.total_steps():,} steps, "
                f"{_human(self.total_tokens())} tokens")
        secs = self.seconds()
        if secs is None:
            return head + "; time per step not measured yet (known after the first trial)"
        par = f", {self.parallel} at a time" if self.parallel > 1 else ""
        start = f" + {self.start_seconds:.0f} s start-up a trial" if self.start_seconds else ""
        return (f"{head}; at most {_duration(secs)}{par} ({self.step_seconds * 1000:.0f} ms a step{start}, "
                f"{self.source}; pruning shortens it)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_steps": self.total_steps(), "total_tokens": self.total_tokens(),
                "seconds": self.seconds()}


def sweep_cost(trials: int, steps: int, tokens_per_step: int, *, parallel: int = 1,
               step_seconds: float | None = None, source: str = "", start_seconds: float = 0.0) -> SweepCost:
    return SweepCost(trials=trials, steps=steps, tokens_per_step=tokens_per_step, parallel=parallel,
                     step_seconds=step_seconds, source=source if step_seconds is not None else "",
                     start_seconds=start_seconds if step_seconds is not None else 0.0)


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
