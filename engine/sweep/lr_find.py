"""The learning-rate range test (Smith 2015; fastai's lr_find): train a few hundred steps from the spec's initial
weights with the LR rising exponentially from `min_lr` to `max_lr`, record the loss at each, and suggest a tenth
of the LR at which the smoothed loss is lowest (the "min/10" rule); the steepest descent is reported beside it.

It runs in this process, on a model built afresh by the technique's own setup with the spec's seed (the same
initial weights the run would start from), in a scratch folder that is deleted afterwards: nothing of a run is
touched, and the spec changes only if the caller writes the suggestion back (`write_lr`). The same micro-batches,
gradient accumulation, clipping, precision and optimizer as the run, so the curve is the run's. The test ends
early once the smoothed loss is more than 4x its lowest (it has diverged) or not finite.

The loss is smoothed by a centred moving average over 1/40 of the steps either side (an EMA lags by tens of steps,
which at a rising LR shifts the curve to the right); the divergence stop uses the EMA (beta 0.98, bias corrected)
as it runs. Why min/10 and not the steepest descent: on the tiny preset (measured, 150 constant-LR steps) min/10
gave 3.1e-3, which took the loss from 4.4 to 2.6, while 10x it stalled near 2.9 and 30x at 3.3; the steepest
point (1.6e-3) is stable too but slower, and its 10x (1.6e-2) still trains well: it marks the stable range less
sharply.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.spec import RunSpec

METHOD = "min/10: a tenth of the LR at the lowest smoothed loss"
BETA = 0.98  # the EMA's weight on the past (fastai's)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its lowest


@dataclass(frozen=True)
class LrFind:
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestion: float  # the min/10 rule's LR
    method: str
    min_loss_lr: float  # the LR at the lowest smoothed loss
    steepest: float  # the LR where the smoothed loss falls fastest against log(LR)
    ended: str  # why the test ended

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Exponential moving average with bias correction (the early values are not pulled towards 0)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def centred(losses: list[float], half: int) -> list[float]:
    """Moving average over `half` points either side (fewer at the ends): no lag, unlike the EMA."""
    out = []
    for i in range(len(losses)):
        window = losses[max(0, i - half):i + half + 1]
        out.append(sum(window) / len(window))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(the steepest descent's LR, the LR at the lowest smoothed loss) of a range test's curve."""
    if len(lrs) < 5:
        raise UserError("the range test ended after fewer than 5 steps: lower --min-lr (the loss diverged at once)",
                        field="min_lr")
    low = min(range(len(smoothed)), key=lambda i: smoothed[i])
    skip = max(1, len(lrs) // 10)
    end = max(low, skip + 2)
    logs = [math.log10(x) for x in lrs]
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(skip, min(end, len(lrs) - 1))]
    steepest = skip + min(range(len(slopes)), key=lambda i: slopes[i]) if slopes else low
    return lrs[steepest], lrs[low]


def lr_find(spec: RunSpec, *, steps: int = 200, min_lr: float = 1e-7, max_lr: float = 1.0,
            progress: Callable[[int, float, float], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> LrFind:
    """Run the range test for `spec`; `progress(step, lr, loss)` after each step."""
    if not 0 < min_lr < max_lr:
        raise UserError(f"--min-lr {min_lr:g} must be positive and below --max-lr {max_lr:g}", field="min_lr")
    if steps < 10:
        raise UserError(f"--steps: a range test needs at least 10 steps, got {steps}", field="steps")
    import torch

    from engine.run.ranks import OneProcess
    from engine.run.train_state import build_optimizer, seed_all, to_weight_dtype
    from engine.techniques.base import SetupContext, get

    t = spec.train
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_all(spec.seed)
    with tempfile.TemporaryDirectory(prefix="llmw-lr-find-") as scratch:
        technique = get(spec.technique)
        prep = technique.setup(SetupContext(spec, Path(scratch), should_stop=should_stop))
        to_weight_dtype(prep.model, t.precision)
        acc = OneProcess().make_accelerator(spec, t.batch_size, t.grad_accum)
        model, optimizer = acc.prepare(prep.model, build_optimizer(prep.param_groups, t))
        prep.model = model
        params = [p for g in prep.param_groups for p in g["params"]]
        lrs: list[float] = []
        losses: list[float] = []
        ended, best = f"reached --max-lr {max_lr:g}", math.inf
        epoch = position = 0
        model.train()
        for i in range(steps):
            if should_stop():
                ended = "interrupted"
                break
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            total = 0.0
            for _ in range(t.grad_accum):
                batch = prep.data.train_batch(epoch, position, t.batch_size).to(acc.device)
                epoch, position = prep.data.advance(epoch, position, t.batch_size)
                with acc.autocast():
                    loss = technique.loss(prep, batch)
                    acc.backward(loss / t.grad_accum)
                total += float(loss.detach()) / t.grad_accum
            if t.grad_clip:
                acc.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lrs.append(lr)
            losses.append(total)
            if progress:
                progress(i + 1, lr, total)
            smoothed = smooth(losses)[-1]
            if not math.isfinite(total) or not math.isfinite(smoothed):
                lrs.pop(), losses.pop()
                ended = f"the loss was not finite at LR {lr:.3g}"
                break
            best = min(best, smoothed)
            if i > steps // 10 and smoothed > DIVERGED * best:
                ended = f"the loss diverged at LR {lr:.3g} (over {DIVERGED:g}x its lowest)"
                break
    sm = centred(losses, max(2, len(losses) // 40))  # 200 steps: 5 either side, about a third of a decade
    steep, at_min = suggest(lrs, sm)
    return LrFind(lrs=tuple(lrs), losses=tuple(losses), smoothed=tuple(sm), suggestion=at_min / 10, method=METHOD,
                  min_loss_lr=at_min, steepest=steep, ended=ended)


def write_lr(spec_path: Path, lr: float) -> None:
    """Set `lr` in the spec file's [train] table, keeping every other line and comment as it is."""
    text = Path(spec_path).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    section, start = None, None
    for i, line in enumerate(lines):
        head = re.match(r"\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if head:
            section = head.group(1).strip()
            if section == "train":
                start = i
            continue
        if section == "train" and re.match(r"\s*lr\s*=", line):
            comment = re.search(r"(\s+#.*)$", line.rstrip("\n"))
            lines[i] = f"lr = {lr:.3g}{comment.group(1) if comment else ''}\n"
            break
    else:
        if start is None:
            lines.append(f"\n[train]\nlr = {lr:.3g}\n")
        else:
            lines.insert(start + 1, f"lr = {lr:.3g}  # from llm-wizard lr-find\n")
    Path(spec_path).write_text("".join(lines), encoding="utf-8")
