"""Out of memory: one classifier for every form it takes, and a batch-size finder (RELIABILITY O1, O3, O6).

accelerate's `should_reduce_batch_size` only looks at a RuntimeError with exactly one argument and three
spellings; CUDA also reports OOM as a cuBLAS/cuDNN allocation failure, as a RuntimeError with several
arguments, or wrapped in another exception. `is_oom` looks at the whole chain and every argument.

`find_micro_batch` binary-searches the largest micro-batch that fits (a probe callable raises an OOM
when it does not), keeps a safety margin below it and returns the gradient accumulation that keeps the
effective batch. When nothing fits it raises `NoBatchFits`, a UserError whose message carries the numbers
and the options that use less memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

_OOM = re.compile(
    r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|CUDNN_STATUS_NOT_ENOUGH_WORKSPACE|"
    r"cudaErrorMemoryAllocation|DefaultCPUAllocator: can't allocate memory|CUDA.*Tried to allocate [0-9.]+ [KMGT]?i?B|"
    r"NCCL.*(ncclSystemError|Cuda failure 'out of memory')", re.IGNORECASE)


def is_oom(exc: BaseException | None) -> bool:
    """True for torch.OutOfMemoryError and every message form of the same fault, however wrapped."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("OutOfMemoryError", "MemoryError"):
            return True
        texts = [str(a) for a in getattr(exc, "args", ())] + [str(exc)]
        if isinstance(exc, (RuntimeError, OSError, ValueError)) and any(_OOM.search(t) for t in texts):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_RAN_OUT = object()  # a probe's answer: it ran out of memory


class NoBatchFits(UserError):
    pass


@dataclass(frozen=True)
class BatchChoice:
    micro_batch: int
    grad_accum: int
    largest_fitting: int
    probes: list[int]
    peaks: dict[int, int] = field(default_factory=dict)  # micro-batch -> measured bytes (CUDA only)
    limit_bytes: int | None = None  # what a step may use: margin x the memory this process can have

    @property
    def effective(self) -> int:
        return self.micro_batch * self.grad_accum

    def message(self) -> str:
        text = (f"micro-batch {self.micro_batch} x {self.grad_accum} accumulation steps (effective batch "
                f"{self.effective}); the largest that fit was {self.largest_fitting}")
        peak = self.peaks.get(self.micro_batch)
        if peak is not None and self.limit_bytes:
            text += f"; its step needs {gib(peak)} of {gib(self.limit_bytes)} usable"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "grad_accum": self.grad_accum, "effective": self.effective,
                "largest_fitting": self.largest_fitting, "probes": list(self.probes),
                "peaks": {str(b): n for b, n in self.peaks.items()}, "limit_bytes": self.limit_bytes}


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def find_micro_batch(probe: Callable[[int], Any], effective: int, *, margin: float = 0.9,
                     limit_bytes: int | None = None, estimate: dict[str, Any] | None = None,
                     options: list[str] | None = None) -> BatchChoice:
    """The largest micro-batch <= `effective` for which `probe(b)` does not run out of memory, with a
    margin, rounded down to a divisor of `effective` so the effective batch stays exact through accumulation.

    The margin is memory headroom when the probe can measure: `probe(b)` returns the bytes its step needs
    and the caller passes `limit_bytes` (margin x the memory it can have); a step above it counts as not
    fitting. A probe that measures nothing (returns None) has the margin taken off the batch instead:
    `largest x margin` (the worst case was probed, but memory fragments as a run goes on)."""
    if effective < 1:
        raise UserError(f"the effective batch must be at least 1, got {effective}", field="train.batch_size")
    probes: list[int] = []
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        probes.append(b)
        try:
            used = probe(b)
        except Exception as e:  # noqa: BLE001 - only OOMs are answers; anything else is re-raised
            if not is_oom(e):
                raise
            used = _RAN_OUT
        if used is _RAN_OUT:  # out of the except block: its traceback no longer holds the probe's tensors
            _free_cache()
            return False
        if isinstance(used, int) and not isinstance(used, bool):
            peaks[b] = used
            return limit_bytes is None or used <= limit_bytes
        return True

    lo, hi = 0, effective  # lo fits (0 trivially), hi+1 does not
    if fits(hi):
        lo = hi
    else:
        hi -= 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
    if lo == 0:
        raise NoBatchFits(no_fit_report(effective, estimate, options), field="train.batch_size", exit_code=3)
    measured = limit_bytes is not None and lo in peaks
    target = lo if measured or lo == effective else max(1, int(lo * margin))
    micro = max(d for d in range(1, target + 1) if effective % d == 0)
    return BatchChoice(micro, effective // micro, lo, probes, peaks, limit_bytes)


DEFAULT_OPTIONS = ["LoRA or QLoRA instead of a full fine-tune", "train.gradient_checkpointing = true",
                   "bf16 precision", "a shorter train.seq_len",
                   "more GPUs with distributed.strategy = \"fsdp\" (shards weights, gradients and states)",
                   "a smaller model"]


def no_fit_report(effective: int, estimate: dict[str, Any] | None, options: list[str] | None = None) -> str:
    """Why nothing fits, with the estimator's numbers, and what uses less memory (RELIABILITY O6)."""
    numbers = ""
    if estimate:
        numbers = " (" + "; ".join(f"{k}: {v}" for k, v in estimate.items()) + ")"
    return (f"out of memory even at micro-batch 1 of {effective}{numbers}. Options: "
            + "; ".join(options or DEFAULT_OPTIONS))


def _free_cache() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
