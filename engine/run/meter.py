"""What the trainer measures: the numbers it logs between two metrics events, and the validation loss.

The loss, its square and the gradient norm stay on the device for the whole interval (an `Interval`) and are
read in one sync at the log (litgpt's rule: `.item()` only at the logging interval). Step time is smoothed
for the ETA, leaving out the warm-up intervals; MFU is against the device's peak FLOPs, all ranks together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.machine import flops
from engine.run.watchdogs import is_oom


@dataclass
class Interval:
    """What accumulates between two metrics events (tensors stay on the device until logged)."""
    loss: Any = 0.0
    loss_sq: Any = 0.0  # sum of squared step losses: the spread the spike skip's threshold needs
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    grad_norm: Any = None
    lr: float = 0.0
    flags: list[Any] = field(default_factory=list)  # per step, on the device: [loss, grad norm] not finite, spike
    losses: list[Any] = field(default_factory=list)  # per flagged step, on the device: its loss (for the alerts)
    spans: list[list[int]] = field(default_factory=list)  # per flagged step: epoch, position before and after
    start: tuple[int, int] | None = None  # the data position where the interval began


@dataclass
class Meter:
    """The throughput side of the metrics: step time (smoothed for the ETA), tokens/s, MFU."""
    flops_per_token: float
    peak_flops: float | None  # one device's; None where unknown (the CPU)
    log_every: int
    world: int = 1
    step_ms_smooth: float | None = None

    def read(self, iv: Interval, step: int) -> tuple[dict[str, float], float]:
        """The interval's metrics (one device sync) and its mean squared loss."""
        import torch

        loss_sum, loss_sq, grad_norm = torch.stack([iv.loss, iv.loss_sq, iv.grad_norm.to(iv.loss.dtype)]).tolist()
        step_ms = 1000 * iv.seconds / iv.steps
        if self.step_ms_smooth is None or step <= 2 * self.log_every:
            self.step_ms_smooth = step_ms  # the first intervals include warm-up: replace, don't average
        else:
            self.step_ms_smooth = 0.8 * self.step_ms_smooth + 0.2 * step_ms
        tok_per_s = iv.tokens / max(iv.seconds, 1e-9)
        peak = self.peak_flops and self.peak_flops * self.world
        return {"train/loss": loss_sum / iv.steps, "train/lr": iv.lr, "train/grad_norm": grad_norm,
                "train/tok_per_s": tok_per_s, "train/step_ms": step_ms,
                "train/mfu": flops.mfu(self.flops_per_token, tok_per_s, peak)}, loss_sq / iv.steps

    def eta_s(self, steps_left: int) -> float:
        return steps_left * (self.step_ms_smooth or 0.0) / 1000


def memory_metrics() -> dict[str, int]:
    """Peak GPU memory of this process, or its peak resident memory on the CPU."""
    import torch

    if torch.cuda.is_available():
        return {"sys/gpu_mem": torch.cuda.max_memory_allocated()}
    import resource

    return {"sys/rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def val_loss(loss_of: Callable[[Any], Any], data: Any, accelerator: Any, batch: int, max_batches: int,
             stopping: Callable[[], bool], shrunk: Callable[[int], None]) -> tuple[float | None, int]:
    """The mean loss over the validation batches (at most `max_batches`, 0: all; fewer once `stopping`) and the
    eval batch size it took: an out-of-memory error halves it and starts again (`shrunk` is told), down to 1.
    None when no batch was evaluated."""
    import torch

    while True:
        total, n = 0.0, 0
        try:
            with torch.no_grad(), accelerator.autocast():
                for b in data.val_batches(batch):
                    total += float(loss_of(b.to(accelerator.device)))
                    n += 1
                    if (max_batches and n >= max_batches) or stopping():
                        break
            return (total / n if n else None), batch
        except Exception as e:
            if not is_oom(e) or batch == 1:
                raise
            batch //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            shrunk(batch)
