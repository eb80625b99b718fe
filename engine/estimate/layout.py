"""Which multi-GPU layout to propose for a run: how many processes and which strategy (issue 7).

The wizard asks this of the probed GPUs and the estimator. A model whose DDP copy fits one GPU trains
with DDP over every local GPU (a full copy per GPU: the fastest, no sharding traffic). One whose DDP copy
does not fit but whose sharded share does gets FSDP over the local GPUs (ZeRO-3 where FSDP is not
available and DeepSpeed is). When nothing fits, the proposal says so and keeps the layout with the
smallest per-GPU need, so that the estimator's suggestions start from it. Every number is the
estimator's per-GPU total (engine/estimate/breakdown.py `_sharded`: DDP replicates and adds its gradient buckets,
FSDP/ZeRO-3 shard weights, gradients and optimizer states). Nothing heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.estimate.memory import STRATEGIES, EstimateRequest, estimate, verdict
from engine.machine.strategies import strategy_unavailable

if TYPE_CHECKING:
    from engine.models.shape import ModelDims

NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
SHARDED_PREFERENCE = ("fsdp", "zero3")  # what a model too large for one GPU gets, the first available


@dataclass(frozen=True)
class LayoutOption:
    strategy: str
    num_processes: int
    total_bytes: int  # the estimator's per-GPU total with this layout
    verdict: str  # on the smallest probed GPU: fits | tight | no
    unavailable: str | None  # why this machine cannot train it (None: it can)

    def describe(self) -> str:
        """`FSDP x8: 21 GiB/GPU`."""
        return f"{NAMES[self.strategy]} x{self.num_processes}: {gib(self.total_bytes)}/GPU"


@dataclass(frozen=True)
class Proposal:
    num_processes: int
    strategy: str
    kind: str  # cpu (no GPU) | single (one GPU) | ddp | sharded | none (nothing fits)
    options: tuple[LayoutOption, ...]  # every strategy over all local GPUs (empty below two GPUs)
    message: str  # one line for the wizard: `DDP 92 GiB/GPU: does not fit 80 GiB; FSDP x8: 21 GiB/GPU fits`


def gib(n: float) -> str:
    if n >= 10 * 2**30:
        return f"{n / 2**30:.0f} GiB"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def cuda_usable(report: Any) -> bool:
    """Whether torch can use CUDA on the probed machine (engine.machine.probe.HardwareReport). Not asked of
    torch (None: not imported): a CUDA build with GPUs that NVML sees is taken as usable."""
    t = report.torch
    if t.cuda_available is not None:
        return bool(t.cuda_available)
    return t.cuda is not None and bool(report.gpus)


def layout_options(req: EstimateRequest, gpus: list[tuple[int, str, int]], num_processes: int, *, cuda: bool,
                   dims: ModelDims | None = None) -> tuple[LayoutOption, ...]:
    """Every strategy at `num_processes` processes: its per-GPU total, verdict and availability here."""
    d = dims or req.dims()
    free = min(g[2] for g in gpus)
    out = []
    for s in STRATEGIES:
        est = estimate(replace(req, gpus=num_processes, strategy=s), gpus=gpus, dims=d, with_suggestions=False)
        out.append(LayoutOption(s, num_processes, est.total_bytes, verdict(est.total_bytes, free),
                                strategy_unavailable(s, cuda=cuda)))
    return tuple(out)


def propose(req: EstimateRequest, gpus: list[tuple[int, str, int]], *, cuda: bool,
            dims: ModelDims | None = None) -> Proposal:
    """The layout for this request on these GPUs ([(index, name, free bytes)])."""
    n = len(gpus)
    if n == 0:
        return Proposal(1, "ddp", "cpu", (), "No GPU: one process, in system memory.")
    d = dims or req.dims()
    free = min(g[2] for g in gpus)
    if n == 1:
        est = estimate(replace(req, gpus=1, strategy="ddp"), gpus=gpus, dims=d, with_suggestions=False)
        fits = verdict(est.total_bytes, free) != "no"
        return Proposal(1, "ddp", "single" if fits else "none", (),
                        f"One GPU: {gib(est.total_bytes)} of {gib(free)} free" + ("" if fits else ": does not fit"))
    options = layout_options(req, gpus, n, cuda=cuda, dims=d)
    by = {o.strategy: o for o in options}
    ddp = by["ddp"]
    if ddp.verdict != "no":
        return Proposal(n, "ddp", "ddp", options, f"{ddp.describe()} {_said(ddp.verdict)} (a full copy per GPU)")
    head = f"DDP {gib(ddp.total_bytes)}/GPU: does not fit {gib(free)}"
    for s in SHARDED_PREFERENCE:
        o = by[s]
        if o.unavailable is None and o.verdict != "no":
            return Proposal(n, s, "sharded", options, f"{head}; {o.describe()} {_said(o.verdict)}")
    # nothing fits: name the sharded numbers anyway (and why they cannot be used here)
    sharded = [by[s] for s in SHARDED_PREFERENCE]
    parts = [f"{o.describe()}" + (f" ({o.unavailable})" if o.unavailable else ": does not fit") for o in sharded]
    usable = [o for o in options if o.unavailable is None]
    best = min(usable, key=lambda o: o.total_bytes)
    return Proposal(n, best.strategy, "none", options,
                    f"Nothing fits: {head}; " + "; ".join(parts) + ". See the suggestions.")


def _said(verdict: str) -> str:
    return {"fits": "fits", "tight": "fits, tight", "no": "does not fit"}.get(verdict, verdict)
