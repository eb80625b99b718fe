"""Which GPU machine a run spec needs, how long it runs and what it costs, before anything is created.

For every machine in the price table (engine/cloud/prices.py), the estimator (engine/estimate) gives the per-GPU
total of the spec's run spread over that machine's GPUs: the spec's own strategy first, then DDP (a full copy per
GPU, the fastest) and FSDP (sharded weights, gradients and states) where DDP does not fit; ZeRO comes only when the
spec asks for it (DeepSpeed is an extra the VM's set-up does not install). The run time is the training FLOPs over
the machine's throughput at a stated MFU: FLOPs per token as engine/machine/flops.py counts them (6 per trained and
4 per frozen matmul weight, plus 12 * layers * seq_len * width for attention), peak from the same data-sheet
table, MFU 0.35 unless told (a fine-tune on one GPU commonly reaches 0.3-0.5; the dashboard measures the real one). The
cost is the run time plus SETUP_SECONDS of set-up at the machine's hourly price.
The tokens are the spec's: max_steps x tokens per step, else Chinchilla's 20 tokens a parameter for scratch, else
the local data's size at about 4 bytes a token times the epochs; `--tokens` replaces them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.cloud import prices
from engine.errors import UserError

DEFAULT_MFU = 0.35
# The VM's first start (the driver install, `make setup`, the model download) is billed like the run; ten minutes is
# a stated assumption, added to each cost so that a short run is not sent to a big machine for a saving of seconds.
SETUP_SECONDS = 600
NEAR_COST = 0.01  # costs this close count as equal when choosing (the set-up minutes differ by machine)
BYTES_PER_TOKEN = 4  # plain English text under a BPE tokenizer: a stated assumption, shown in the plan
CHINCHILLA_TOKENS_PER_PARAM = 20


@dataclass(frozen=True)
class Option:
    """One machine of the price table with the layout that fits it best."""

    gpu: str
    count: int
    machine_type: str
    region: str
    strategy: str
    per_gpu_bytes: int  # the estimator's total on each GPU (as nvidia-smi shows it)
    gpu_bytes: int
    verdict: str  # fits | tight | no
    price_hour: float  # USD an hour, spot or on-demand as asked
    spot: bool
    spot_only: bool  # this machine type comes as a Spot VM only
    tokens: int | None
    seconds: float | None
    cost: float | None

    @property
    def fits(self) -> bool:
        return self.verdict != "no"


@dataclass
class Plan:
    spec: str
    model: str
    params: int
    trainable_params: int
    flops_per_token: int
    mfu: float
    tokens_source: str
    options: list[Option]
    chosen: Option | None  # the cheapest run that fits (within 1%: not tight, then shorter); spot-only ones with spot
    fastest: Option | None
    spot: bool
    prices_date: str = prices.PRICES_DATE
    prices_source: str = prices.PRICES_SOURCE
    notes: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """The spec settings that make the run use the chosen machine's GPUs (`train --set`)."""
        c = self.chosen
        if c is None:
            return []
        return [f"distributed.num_processes={c.count}", f"distributed.strategy={c.strategy}"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["overrides"] = self.overrides()
        return out


def matmul_params(dims: Any) -> int:
    """Weights that multiply (engine/machine/flops.py's rule): all but the embeddings' look-ups; a head tied to
    the token embedding multiplies, so it counts once."""
    looked_up = sum(t.numel for t in dims.tensors if t.kind == "embedding")
    tied = dims.vocab_size * dims.hidden if dims.tie_embeddings else 0
    return dims.params - looked_up + tied


def flops_per_token(dims: Any, trainable: int, seq_len: int, *, full: bool) -> int:
    """Training FLOPs per token: 6 per trained and 4 per frozen matmul weight, plus attention's 12 * L * T * d."""
    weights = matmul_params(dims)
    trained = weights if full else min(trainable, weights)
    frozen = 0 if full else weights
    return 6 * trained + 4 * frozen + 12 * dims.layers * seq_len * dims.hidden


def planned_tokens(spec: Any, params: int, tokens_per_step: int) -> tuple[int | None, str]:
    """(tokens, where the number comes from); None when the spec does not say and the data is not local."""
    t = spec.train
    if t.max_steps:
        return t.max_steps * tokens_per_step, f"train.max_steps {t.max_steps:,} x {tokens_per_step:,} tokens a step"
    if spec.technique == "scratch":
        n = CHINCHILLA_TOKENS_PER_PARAM * params
        return n, f"Chinchilla: {CHINCHILLA_TOKENS_PER_PARAM} tokens a parameter (the book's rule for a base model)"
    path = Path(spec.data.path).expanduser() if spec.data.path else None
    if path is not None and path.exists():
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        n = int(size / BYTES_PER_TOKEN * t.epochs)
        return n, (f"{path.name}: {size:,} bytes at about {BYTES_PER_TOKEN} bytes a token x {t.epochs:g} epochs "
                   "(`llm-wizard estimate --spec` counts them exactly)")
    return None, "unknown: set train.max_steps or pass --tokens"


def plan(spec: Any, *, spec_name: str = "", gpus: tuple[str, ...] = (), count: int | None = None,
         region: str | None = None, spot: bool = False, mfu: float = DEFAULT_MFU, tokens: int | None = None,
         dims: Any = None) -> Plan:
    """Every listed machine for this spec (engine.spec.RunSpec) and the cheapest that fits."""
    from engine.estimate.memory import estimate, verdict
    from engine.estimate.request import request_from_spec
    from engine.machine.flops import peak_flops

    if not 0 < mfu <= 1:
        raise UserError(f"--mfu is a share of the peak between 0 and 1, got {mfu}", field="mfu")
    unknown = [g for g in gpus if g not in prices.GPUS]
    if unknown:
        raise UserError(f"unknown GPU {unknown[0]!r}: choose from {', '.join(prices.GPUS)}", field="gpu")
    if region is not None and region not in prices.regions():
        raise UserError(f"no prices for region {region!r}: the table has {', '.join(prices.regions())}", field="region")
    if spec.technique == "openai":
        raise UserError("technique openai trains on OpenAI's machines: there is no VM to plan", field="technique")
    base = request_from_spec(spec, gpus=1)
    d = dims or base.dims()
    rows = [m for g in (gpus or tuple(prices.GPUS)) for m in prices.machines(g, region=region, count=count)]
    if not rows:
        raise UserError("no machine in the price table matches: leave out --count or --region", field="count")
    first = estimate(base, gpus=[(0, "plan", 10**15)], dims=d, with_suggestions=False)
    trainable = first.model.trainable_params
    full = spec.technique in ("scratch", "full", "moe") or (base.preference and base.finetuning == "full")
    fpt = flops_per_token(d, trainable, spec.train.seq_len, full=full)
    order = list(dict.fromkeys([base.strategy, "ddp", "fsdp"]))
    options: list[Option] = []
    for m in rows:
        g = prices.GPUS[m.gpu]
        best = None
        for s in order if m.count > 1 else ["ddp"]:
            req = replace(base, gpus=m.count, strategy=s)
            est = estimate(req, gpus=[(i, g.nvml, g.memory_bytes) for i in range(m.count)], dims=d,
                           with_suggestions=False)
            v = verdict(est.total_bytes, g.memory_bytes)
            if best is None or (best[2] == "no" and v != "no"):
                best = (s, est.total_bytes, v)
            if v != "no":
                break
        strategy, per_gpu, v = best  # type: ignore[misc]
        n_tokens, _ = (tokens, "") if tokens else planned_tokens(spec, d.params, base.tokens_per_step(m.count))
        peak = peak_flops(g.nvml)
        seconds = n_tokens * fpt / (m.count * peak * mfu) if n_tokens and peak else None
        spot_only = m.count < g.spot_only_below
        price = m.price(spot or spot_only)
        options.append(Option(m.gpu, m.count, m.machine_type, m.region, strategy, per_gpu, g.memory_bytes, v, price,
                              spot or spot_only, spot_only, n_tokens, seconds,
                              None if seconds is None else (seconds + SETUP_SECONDS) / 3600 * price))
    fitting = [o for o in options if o.fits and (spot or not o.spot_only)]
    chosen = None
    if fitting:  # the cheapest; within 1% of it (a few minutes of set-up), a roomier, then a faster machine
        def money(o: Option) -> float:
            return o.cost if o.cost is not None else o.price_hour

        least = min(money(o) for o in fitting)
        near = [o for o in fitting if money(o) <= least * (1 + NEAR_COST)]
        chosen = min(near, key=lambda o: (o.verdict == "tight", o.seconds or 0, o.count))
    timed = [o for o in fitting if o.seconds is not None]
    fastest = min(timed, key=lambda o: (o.seconds, o.price_hour)) if timed else None
    per_step = base.tokens_per_step(chosen.count if chosen else 1)  # data parallel: each GPU its own batches
    source = f"--tokens {tokens:,}" if tokens else planned_tokens(spec, d.params, per_step)[1]
    notes = []
    if chosen is None:
        notes.append("nothing in the table fits: `llm-wizard estimate --spec` lists the changes that make it fit "
                     "(gradient checkpointing, adamw8bit, bf16-pure, a smaller batch)")
    if any(o.spot_only for o in options):
        notes.append("A3 High with fewer than 8 H100s comes as a Spot VM only: priced as spot, chosen only with --spot")
    return Plan(spec=spec_name, model=f"{d.model_type} ({d.source})", params=d.params, trainable_params=trainable,
                flops_per_token=fpt, mfu=mfu, tokens_source=source, options=options, chosen=chosen,
                fastest=fastest, spot=spot, notes=notes)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
