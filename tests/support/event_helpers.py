"""Events as the job writes them, for tests that play the job: the typed constructors of
engine/runfolder/events.py with the keys the trainer always fills in given plausible values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.runfolder import events as ev


def metrics(step: int, loss: float = 2.0, lr: float = 1e-3, **fields: Any) -> ev.Metrics:
    """A metrics event with every key the trainer always writes (no MFU: the CPU). The machine's memory
    (`sys_rss` on the CPU, `sys_gpu_mem` on a GPU) only when asked for: a test that shows it says so."""
    base: dict[str, Any] = dict(step=step, epoch=step / 1000, tokens=step * 512, eta_s=10.0, branch=0,
                                train_loss=loss, train_lr=lr, train_grad_norm=1.0, train_tok_per_s=10240.0,
                                train_step_ms=100.0, train_mfu=None, train_loss_smooth=loss)
    return ev.Metrics(**{**base, **fields})


def write(run: Path, events: list[ev.Event]) -> None:
    """Append `events` to the run's events.jsonl with the job's own writer."""
    run.mkdir(parents=True, exist_ok=True)
    log = ev.EventLog(run)
    for e in events:
        log.emit(e, flush=False)
    log.close()
