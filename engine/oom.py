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
from dataclasses import dataclass
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


class NoBatchFits(UserError):
    pass


@dataclass(frozen=True)
class BatchChoice:
    micro_batch: int
    grad_accum: int
    largest_fitting: int
    probes: list[int]

    @property
    def effective(self) -> int:
        return self.micro_batch * self.grad_accum

    def message(self) -> str:
        return (f"micro-batch {self.micro_batch} x {self.grad_accum} accumulation steps (effective batch "
                f"{self.effective}); the largest that fit was {self.largest_fitting}")


def find_micro_batch(probe: Callable[[int], Any], effective: int, *, margin: float = 0.9,
                     estimate: dict[str, Any] | None = None) -> BatchChoice:
    """The largest micro-batch <= `effective` for which `probe(b)` does not run out of memory, times
    `margin` (the worst-case step was probed, but memory fragments as a run goes on), rounded down to a
    divisor of `effective` so the effective batch stays exact through accumulation."""
    if effective < 1:
        raise UserError(f"the effective batch must be at least 1, got {effective}", field="train.batch_size")
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        try:
            probe(b)
            return True
        except Exception as e:  # noqa: BLE001 - only OOMs are answers; anything else is re-raised
            if not is_oom(e):
                raise
            _free_cache()
            return False

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
        raise NoBatchFits(no_fit_report(effective, estimate), field="train.batch_size")
    target = max(1, int(lo * margin)) if lo < effective else lo
    micro = max(d for d in range(1, target + 1) if effective % d == 0)
    return BatchChoice(micro, effective // micro, lo, probes)


def no_fit_report(effective: int, estimate: dict[str, Any] | None) -> str:
    numbers = ""
    if estimate:
        numbers = " (" + ", ".join(f"{k} {v}" for k, v in estimate.items()) + ")"
    return (f"out of memory even at micro-batch 1 of {effective}{numbers}. Options: LoRA or QLoRA instead of a "
            "full fine-tune, train.gradient_checkpointing = true, bf16 precision, a shorter train.seq_len, "
            "or a smaller model")


def _free_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
