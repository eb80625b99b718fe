"""The non-finite guard (RELIABILITY N1/N2) without a host sync on every step.

A NaN or inf in the loss or the gradient norm must never reach the weights or the optimizer's moments.
Reading a boolean back from the GPU each step would stall its queue, so the check stays on the device:
torch's fused AdamW/Adam/SGD take a `found_inf` tensor (the hook GradScaler uses) and their kernel leaves
the weights, the moments and the step count untouched when it is 1. The trainer keeps the per-step
flags on the device and reads them once at the next logging interval, checkpoint or evaluation (a sync
that happens there anyway), then takes the skipped steps off the count; engine/run/escalation.py alerts and
counts them, pausing or rolling back when too many come in a row.

The same flag skips a loss spike (RELIABILITY N4's "skip" rung): a third per-step flag, loss above a
threshold that lives on the device as a scalar, refilled (fill_, no sync) at each log from the spike
detector's smoothed loss and spread (engine/run/watchdogs.py `skip_threshold`; inf while not armed).

Optimizers without that hook (bitsandbytes' 8-bit ones) and fp16 with a GradScaler (accelerate's
scaler step reads its own overflow flag back every step anyway) keep the synchronous check: one
boolean a step.
"""

from __future__ import annotations

from typing import Any


def inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def skips_on_device(optimizer: Any, scaler: Any = None) -> bool:
    """True when `optimizer.step()` can be skipped by a device flag (fused torch optimizer, no scaler)."""
    import torch

    opt = inner(optimizer)
    fused = isinstance(opt, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)) and \
        all(g.get("fused") for g in opt.param_groups)
    return scaler is None and fused and getattr(opt, "_step_supports_amp_scaling", False)


def nonfinite_flags(loss: Any, grad_norm: Any, skip_above: Any = None) -> Any:
    """A device tensor [loss not finite, grad norm not finite] (no sync); with the device scalar `skip_above`,
    a third flag: the loss is a spike to skip (NaN compares false; an inf loss is flagged non-finite too)."""
    import torch

    flags = [~torch.isfinite(loss), ~torch.isfinite(grad_norm)]
    if skip_above is not None:
        flags.append(loss > skip_above)
    return torch.stack(flags)


def step_unless(optimizer: Any, bad: Any) -> None:
    """optimizer.step(), which the fused kernel itself skips when the device scalar `bad` is true."""
    import torch

    opt = inner(optimizer)
    opt.found_inf = bad.to(dtype=torch.float32)
    opt.grad_scale = None
    try:
        optimizer.step()
    finally:
        del opt.found_inf, opt.grad_scale
