"""The changes that make a run fit, ranked by memory saved, with table 5.2's trade-offs.

Each suggestion is the same request with one change, estimated again through the breakdown
(engine/estimate/breakdown.py): the new total is arithmetic, not a guess. Table 5.2 of the book says
which choices trade speed for memory. A change is named in the run spec's vocabulary and only with a
value the run engine trains (engine/vocabulary.py `trains`), so `llm-wizard train --set` accepts it.
Pure bf16 (bf16 weights, gradients and optimizer states, no fp32 copy) is lossy where the others are not:
updates under about 1/256 of a weight round away. It is suggested last, after every lossless change
whatever it saves, with that trade-off in its text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine import vocabulary
from engine.errors import UserError
from engine.estimate.breakdown import breakdown, verdict
from engine.estimate.request import Estimate, EstimateRequest, Suggestion
from engine.models.shape import ModelDims


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
    TradeOff("mixed precision", "yes", "no", "hard", "16-bit compute over fp32 weights; activations halve"),
    TradeOff("optimizer choice", "yes", "yes", "easy", "8-bit AdamW keeps 2 bytes of state a parameter, not 8"),
    TradeOff("data preloading", "yes", "no", "medium", "workers and pinned memory keep the GPU fed"),
    TradeOff("compile", "yes", "no", "easy", "torch.compile fuses kernels"),
)
_ROW = {r.choice: r for r in TABLE_5_2}
# Not in table 5.2: the book's section 5.3 techniques and multi-GPU sharding.
_LORA = TradeOff("LoRA / QLoRA (5.3.5)", "yes", "yes", "medium", "trains small adapters; the base stays frozen")
_SHARD = TradeOff("more GPUs, FSDP / ZeRO-3", "yes", "yes", "hard", "shards weights, gradients and states")
_SEQ = TradeOff("shorter sequences", "yes", "yes", "easy", "the model sees less context per example")
_PURE = TradeOff("pure bf16 (lossy)", "yes", "yes", "medium",
                 "no fp32 weights or states: half their memory; updates under about 1/256 of a weight are lost")
_REF = TradeOff("DPO's reference precomputed", "yes", "yes", "easy",
                "one forward pass over the pairs before training, no second copy of the weights")
MIN_SAVING = 0.05  # a change that saves less than 5% of the total is not worth suggesting


# A suggestion's `changes`: the run spec's dotted field -> (the estimate request's field, the CLI flag).
# Values are the spec's (engine/vocabulary.py), which the estimate request and the wizard's choices share;
# the flag string is the same change for `llm-wizard estimate`.
FIELDS: dict[str, tuple[str, str]] = {
    "technique": ("technique", "--technique"),
    "options.lora_rank": ("lora_rank", "--lora-rank"),
    "options.finetuning": ("finetuning", "--set options.finetuning="),  # dpo/orpo: lora | qlora | full
    "options.reference": ("reference", "--set options.reference="),  # dpo: the reference model
    "train.gradient_checkpointing": ("grad_checkpointing", "--grad-checkpointing"),
    "train.optimizer": ("optimizer", "--optimizer"),
    "train.precision": ("precision", "--precision"),
    "train.batch_size": ("batch_size", "--batch-size"),
    "train.grad_accum": ("grad_accum", "--grad-accum"),
    "train.seq_len": ("seq_len", "--seq-len"),
    "distributed.num_processes": ("gpus", "--gpus"),
    "distributed.strategy": ("strategy", "--strategy"),
}


def flags_for(changes: dict[str, object]) -> str:
    """The CLI flags that make these changes (`--batch-size 4 --grad-accum 4`); a true boolean is a bare flag."""
    words: list[str] = []
    for key, value in changes.items():
        flag = FIELDS[key][1]
        if flag.endswith("="):  # a spec setting with no flag of its own: `train --set key=value`
            words.append(f"{flag}{value}")
            continue
        words += [flag] if value is True else [flag, str(value)]
    return " ".join(words)


def _applied(req: EstimateRequest, changes: dict[str, object]) -> EstimateRequest:
    return replace(req, **{FIELDS[k][0]: v for k, v in changes.items()})


def _try(req: EstimateRequest, d: ModelDims, probed: list[tuple[int, str, int]],
         changes: dict[str, object], measure: bool = False) -> Estimate:
    new = _applied(req, changes)
    if measure and d.measurable:  # the change estimated as the run it configures will be: measured too
        from engine.estimate import probe
        from engine.estimate.params import trainable

        inner = replace(new, technique=new.finetuning) if new.preference else new
        probe.ensure(d, probe.variant(inner, trainable(inner, d)))
    return breakdown(new, probed, d)


def _halve_until_fits(req: EstimateRequest, d: ModelDims, gpus: list[tuple[int, str, int]], free: int,
                      name: str, measure: bool = False) -> tuple[dict[str, object], Estimate] | None:
    """Halve `name` (batch_size or seq_len) until the total fits, down to 1 (or 64 tokens)."""
    floor = 64 if name == "seq_len" else 1
    value, best = getattr(req, name), None
    while value // 2 >= floor:
        value //= 2
        changes: dict[str, object] = {f"train.{name}": value}
        if name == "batch_size":
            changes["train.grad_accum"] = req.grad_accum * (req.batch_size // value)
        est = _try(req, d, gpus, changes, measure)
        best = (changes, est)
        if est.total_bytes <= free:
            break
    return best


def suggestions(req: EstimateRequest, d: ModelDims, current: Estimate,
                gpus: list[tuple[int, str, int]], measure: bool = False) -> list[Suggestion]:
    """`measure`: estimate each change with the model's measured activations (measuring a new variant, such as
    LoRA for a full fine-tune, once), as the estimate itself did."""
    free = min(g[2] for g in gpus)
    out: list[Suggestion] = []

    def add(change: str, changes: dict[str, object], row: TradeOff, est: Estimate | None = None) -> None:
        try:
            est = est or _try(req, d, gpus, changes, measure)
        except UserError:  # a change this model cannot take (LoRA where peft has no default targets)
            return
        saved = current.total_bytes - est.total_bytes
        if saved > MIN_SAVING * current.total_bytes and _trains(changes):
            out.append(Suggestion(change, flags_for(changes), est.total_bytes, saved, verdict(est.total_bytes, free),
                                  row.choice, row.speed, row.memory, row.difficulty, dict(changes)))

    if not req.grad_checkpointing:
        add("gradient checkpointing", {"train.gradient_checkpointing": True}, _ROW["gradient checkpointing"])
    if req.optimizer in ("adamw", "adafactor") and req.technique not in ("prompt-tuning",):
        add("8-bit AdamW", {"train.optimizer": "adamw8bit"}, _ROW["optimizer choice"])
    if req.precision == "fp32":  # 16-bit activations; the fp32 weights stay (and gain autocast's copies)
        add("mixed precision (bf16 compute over fp32 weights)", {"train.precision": "bf16"}, _ROW["mixed precision"])
    if req.technique in ("full", "moe") and req.model:
        add("LoRA adapters instead of full fine-tuning", {"technique": "lora", "options.lora_rank": req.lora_rank}, _LORA)
    if req.technique in ("full", "moe", "lora") and req.model:
        add("QLoRA: a 4-bit base with LoRA adapters", {"technique": "qlora", "options.lora_rank": req.lora_rank}, _LORA)
    if req.preference and req.model:  # the book's caveat (5.3.3): LoRA-DPO is what a small GPU can afford
        name = req.technique.upper()
        if req.finetuning == "full":
            add(f"LoRA-{name}: adapters instead of every weight (the reference is then the base with the adapter "
                "switched off)", {"options.finetuning": "lora", "options.lora_rank": req.lora_rank}, _LORA)
        if req.finetuning in ("full", "lora"):
            add(f"QLoRA-{name}: adapters on a 4-bit base", {"options.finetuning": "qlora",
                                                           "options.lora_rank": req.lora_rank}, _LORA)
        if req.reference_kind() == "copy":
            add("the reference's log-probs computed once before training instead of a frozen copy",
                {"options.reference": "precomputed"}, _REF)
    if req.batch_size > 1:
        found = _halve_until_fits(req, d, gpus, free, "batch_size", measure)
        if found:
            changes, est = found
            add(f"micro-batch {changes['train.batch_size']} x {changes['train.grad_accum']} accumulation steps "
                "(same effective batch)", changes, _ROW["gradient accumulation"], est)
    if req.seq_len > 64:
        found = _halve_until_fits(req, d, gpus, free, "seq_len", measure)
        if found:
            changes, est = found
            add(f"sequences of {changes['train.seq_len']} tokens", changes, _SEQ, est)
    n = max(req.gpus or len(gpus), 1)
    for more in (2, 4, 8, 16):
        if more > n:
            changes = {"distributed.num_processes": more, "distributed.strategy": "fsdp"}
            est = _try(req, d, gpus, changes)
            if est.total_bytes <= free or more == 16:
                add(f"{more} GPUs with FSDP (ZeRO-3)", changes, _SHARD, est)
                break
    out.sort(key=lambda s: -s.saved_bytes)
    # Lossy, so after every lossless change. Not under DeepSpeed: the run spec refuses it there.
    sharded = (req.gpus or len(gpus)) > 1 and req.strategy in ("zero2", "zero3")
    if req.precision in ("fp32", "bf16") and not sharded:
        add("pure bf16: bf16 weights, gradients and AdamW states, no fp32 copy (lossy: updates under about 1/256 of "
            "a weight round away; mixed bf16 is the safer choice)", {"train.precision": "bf16-pure"}, _PURE)
    return out


def _trains(changes: dict[str, object]) -> bool:
    """Whether the run engine trains every named value of these changes (the estimator also counts some
    it does not: Adafactor)."""
    lists = {"train.precision": vocabulary.PRECISIONS, "train.optimizer": vocabulary.OPTIMIZERS,
             "distributed.strategy": vocabulary.STRATEGIES, "technique": vocabulary.TECHNIQUES}
    return all(vocabulary.find(lists[k], str(v)).trains for k, v in changes.items() if k in lists)
