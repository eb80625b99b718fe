"""The changes that make a run fit, ranked by memory saved, with table 5.2's trade-offs.

Each suggestion is the same request with one change, estimated again: the new total is
arithmetic, not a guess. Table 5.2 of the book says which choices trade speed for memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.estimate import Estimate, EstimateRequest, Suggestion
    from engine.model_count import ModelDims


@dataclass(frozen=True)
class TradeOff:
    choice: str
    speed: str  # does it make training faster?
    memory: str  # does it save memory?
    difficulty: str
    note: str


# Table 5.2 (chapter 5): training choices and what each buys. "Accumulation and checkpointing can
# cut memory by about 60% at the cost of time."
TABLE_5_2: tuple[TradeOff, ...] = (
    TradeOff("batch size", "yes", "yes", "easy", "prefer powers of two"),
    TradeOff("gradient accumulation", "no", "yes", "medium", "same effective batch, more steps per update"),
    TradeOff("gradient checkpointing", "no", "yes", "medium", "recomputes each layer in the backward (~30% slower)"),
    TradeOff("mixed precision", "yes", "no", "hard", "16-bit compute; pure bf16 also halves weights and states"),
    TradeOff("optimizer choice", "yes", "yes", "easy", "8-bit AdamW keeps 2 bytes of state a parameter, not 8"),
    TradeOff("data preloading", "yes", "no", "medium", "workers and pinned memory keep the GPU fed"),
    TradeOff("compile", "yes", "no", "easy", "torch.compile fuses kernels"),
)
_ROW = {r.choice: r for r in TABLE_5_2}
# Not in table 5.2: the book's section 5.3 techniques and multi-GPU sharding.
_LORA = TradeOff("LoRA / QLoRA (5.3.5)", "yes", "yes", "medium", "trains small adapters; the base stays frozen")
_SHARD = TradeOff("more GPUs, FSDP / ZeRO-3", "yes", "yes", "hard", "shards weights, gradients and states")
_SEQ = TradeOff("shorter sequences", "yes", "yes", "easy", "the model sees less context per example")
_BF16 = TradeOff("pure bf16", "yes", "yes", "hard", "16-bit weights and optimizer states; needs a bf16 GPU")
MIN_SAVING = 0.05  # a change that saves less than 5% of the total is not worth suggesting


def _try(req: EstimateRequest, d: ModelDims, probed: list[tuple[int, str, int]], **changes: object) -> Estimate:
    from engine.estimate import estimate

    return estimate(replace(req, **changes), gpus=probed, dims=d, with_suggestions=False)


def _halve_until_fits(req: EstimateRequest, d: ModelDims, gpus: list[tuple[int, str, int]], free: int,
                      name: str, **extra_for: object) -> tuple[EstimateRequest, Estimate] | None:
    """Halve `name` (batch_size or seq_len) until the total fits, down to 1 (or 64 tokens)."""
    floor = 64 if name == "seq_len" else 1
    value, best = getattr(req, name), None
    while value // 2 >= floor:
        value //= 2
        changes: dict[str, object] = {name: value}
        if name == "batch_size":
            changes["grad_accum"] = req.grad_accum * (req.batch_size // value)
        est = _try(req, d, gpus, **changes)
        best = (replace(req, **changes), est)
        if est.total_bytes <= free:
            break
    return best


def suggestions(req: EstimateRequest, d: ModelDims, current: Estimate,
                gpus: list[tuple[int, str, int]]) -> list[Suggestion]:
    from engine.estimate import Suggestion, verdict

    free = min(g[2] for g in gpus)
    out: list[Suggestion] = []

    def add(change: str, flags: str, est: Estimate, row: TradeOff) -> None:
        saved = current.total_bytes - est.total_bytes
        if saved > MIN_SAVING * current.total_bytes:
            out.append(Suggestion(change, flags, est.total_bytes, saved, verdict(est.total_bytes, free),
                                  row.choice, row.speed, row.memory, row.difficulty))

    if not req.grad_checkpointing:
        add("gradient checkpointing", "--grad-checkpointing", _try(req, d, gpus, grad_checkpointing=True),
            _ROW["gradient checkpointing"])
    if req.optimizer in ("adamw", "adafactor") and req.technique not in ("prompt-tuning",):
        add("8-bit AdamW", "--optimizer adamw-8bit", _try(req, d, gpus, optimizer="adamw-8bit"),
            _ROW["optimizer choice"])
    if req.precision in ("fp32", "mixed-bf16", "mixed-fp16") and req.technique not in ("lora", "qlora"):
        add("pure bf16 weights and optimizer states", "--precision bf16", _try(req, d, gpus, precision="bf16"), _BF16)
    if req.technique in ("full", "moe") and req.model:
        add("LoRA adapters instead of full fine-tuning", "--technique lora",
            _try(req, d, gpus, technique="lora"), _LORA)
    if req.technique in ("full", "moe", "lora") and req.model:
        add("QLoRA: a 4-bit base with LoRA adapters", "--technique qlora",
            _try(req, d, gpus, technique="qlora"), _LORA)
    if req.batch_size > 1:
        found = _halve_until_fits(req, d, gpus, free, "batch_size")
        if found:
            r, est = found
            add(f"micro-batch {r.batch_size} x {r.grad_accum} accumulation steps (same effective batch)",
                f"--batch-size {r.batch_size} --grad-accum {r.grad_accum}", est, _ROW["gradient accumulation"])
    if req.seq_len > 64:
        found = _halve_until_fits(req, d, gpus, free, "seq_len")
        if found:
            r, est = found
            add(f"sequences of {r.seq_len} tokens", f"--seq-len {r.seq_len}", est, _SEQ)
    n = max(req.gpus or len(gpus), 1)
    for more in (2, 4, 8, 16):
        if more > n:
            est = _try(req, d, gpus, gpus=more, strategy="fsdp")
            if est.total_bytes <= free or more == 16:
                add(f"{more} GPUs with FSDP (ZeRO-3)", f"--gpus {more} --strategy fsdp", est, _SHARD)
                break
    out.sort(key=lambda s: -s.saved_bytes)
    return out
