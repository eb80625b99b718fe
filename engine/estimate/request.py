"""What an estimate is asked and what it answers: the request and the result types.

The request's values are engine/vocabulary.py's, the run spec's own names (precision "bf16" is mixed
precision over fp32 weights, "bf16-pure" bf16 weights and states, optimizer "adamw8bit"), plus the few
the estimator can count and the run engine does not train (`adafactor`). The estimator's older names
(`mixed-bf16`, `adamw-8bit`) are read as the spec's. Types only: the arithmetic is engine/estimate/breakdown.py's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from engine import vocabulary
from engine.errors import UserError
from engine.models.shape import ModelDims, load_dims

TECHNIQUES = vocabulary.names(vocabulary.TECHNIQUES)
PRECISIONS = vocabulary.names(vocabulary.PRECISIONS)
OPTIMIZERS = vocabulary.names(vocabulary.OPTIMIZERS)
STRATEGIES = vocabulary.names(vocabulary.STRATEGIES)
ATTENTIONS = ("sdpa", "eager")
FINETUNING = ("lora", "qlora", "full")  # a preference technique's weights (engine/techniques/pairs.py)
REFERENCES = ("auto", "adapter", "copy", "precomputed")  # DPO's reference model (engine/techniques/dpo.py)


@dataclass(frozen=True)
class EstimateRequest:
    """What `llm-wizard estimate` takes: the same fields as the run spec's model and train sections."""

    model: str | None = None  # a folder with config.json or a Hub id (config from the Hub cache, else the Hub)
    arch: str | None = None  # scratch: gpt2 | llama
    size: str | None = None  # scratch: tiny | 10M | 125M | 350M | 1B | 7B
    layers: int | None = None
    width: int | None = None
    heads: int | None = None
    vocab_size: int | None = None  # scratch: the tokenizer's vocabulary (default 32000)
    technique: str = "full"
    teacher: str | None = None  # distillation: the teacher's folder or Hub id
    finetuning: str = "lora"  # dpo/orpo: what trains (lora | qlora | full: engine/techniques/pairs.py)
    reference: str = "auto"  # dpo: adapter | copy | precomputed (auto: adapter under LoRA, precomputed for full)
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ()  # module names; empty = peft's default for the family
    num_virtual_tokens: int = 20
    precision: str = "bf16"  # engine.vocabulary.PRECISIONS: bf16 is mixed precision, as in the run spec
    optimizer: str = "adamw"
    batch_size: int = 8  # micro-batch per GPU
    seq_len: int = 1024
    grad_accum: int = 1
    grad_checkpointing: bool = False
    attention: str | None = None  # sdpa | eager; None: what the model's config says (transformers: sdpa)
    gpus: int | None = None  # None: the GPUs probe() finds
    strategy: str = "ddp"
    dataset: str | None = None  # the data check: a .txt/.jsonl/.csv/.parquet file or a folder
    text_column: str | None = None
    max_steps: int | None = None  # for the projected epochs; None: scratch plans 20 tokens a parameter
    # The data check's other settings (engine.data.sources.DataSource's fields: format, template, train_on,
    # prompt_column...), as (name, value) pairs, so the count is the run's for the same data settings.
    data_options: tuple[tuple[str, Any], ...] = ()
    tokenizer: str | None = None  # the tokenizer folder when it is not the model's (the spec's tokenizer.path)

    def __post_init__(self) -> None:
        # pairs, also when read back from JSON (lists): equal requests compare equal
        object.__setattr__(self, "data_options", tuple((str(k), v) for k, v in self.data_options))
        for name in ("precision", "optimizer"):  # the estimator's older names, read as the spec's
            object.__setattr__(self, name, vocabulary.FORMER_NAMES.get(getattr(self, name), getattr(self, name)))
        if self.technique in vocabulary.names(vocabulary.TECHNIQUES) and \
                vocabulary.find(vocabulary.TECHNIQUES, self.technique).hosted:
            raise UserError(f"{self.technique} trains on the service's machines: no memory to estimate here; "
                            "`llm-wizard train` estimates its billed tokens and cost", field="technique")
        for name, allowed in (("technique", TECHNIQUES), ("precision", PRECISIONS),
                              ("optimizer", OPTIMIZERS), ("strategy", STRATEGIES)):
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}", field=name)
        for name in ("lora_rank", "num_virtual_tokens", "batch_size", "seq_len", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"{name.replace('_', '-')} must be a positive whole number, got {value}", field=name)
        for name in ("layers", "width", "heads", "vocab_size", "gpus", "max_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {value}", field=name)
        if self.attention is not None and self.attention not in ATTENTIONS:
            raise UserError(f"unknown attention {self.attention!r}: choose one of {', '.join(ATTENTIONS)}",
                            field="attention")
        if self.finetuning not in FINETUNING:
            raise UserError(f"unknown finetuning {self.finetuning!r}: choose one of {', '.join(FINETUNING)}",
                            field="finetuning")
        if self.reference not in REFERENCES:
            raise UserError(f"unknown reference {self.reference!r}: choose one of {', '.join(REFERENCES)}",
                            field="reference")
        if self.technique == "distill" and not self.teacher:
            raise UserError("distillation needs --teacher (a folder or Hub id)", field="teacher")
        if self.technique != "scratch" and not self.model and self.arch is None:
            raise UserError(f"technique {self.technique} fine-tunes a model: pass --model (or --arch and "
                            "--size for a config-only shape)", field="model")

    def dims(self) -> ModelDims:
        d = load_dims(self.model, arch=self.arch, size=self.size, layers=self.layers, width=self.width,
                      heads=self.heads, vocab_size=self.vocab_size, max_seq_len=max(self.seq_len, 1024))
        return replace(d, attention=self.attention) if self.attention else d

    def lora_target_names(self, dims: ModelDims | None = None) -> tuple[str, ...]:
        return self.lora_targets or (dims or self.dims()).default_lora_targets()

    def tokens_per_step(self, gpus: int = 1) -> int:
        """Tokens one optimizer step trains on: micro-batch x sequence x accumulation x GPUs."""
        return self.batch_size * self.seq_len * self.grad_accum * max(1, gpus)

    @property
    def preference(self) -> bool:
        """dpo/orpo: each example is a pair, a chosen and a rejected sequence."""
        return self.technique in vocabulary.PREFERENCE_TECHNIQUES

    def reference_kind(self) -> str:
        """DPO's reference as the run chooses it for `auto` (none for other techniques): under LoRA/QLoRA the
        base with the adapter off; for a full fine-tune precomputed (the copy is the run's choice only when it
        scores fewer pairs than the data holds, which the estimate cannot know)."""
        if self.technique != "dpo":
            return "none"
        if self.reference != "auto":
            return self.reference
        return "precomputed" if self.finetuning == "full" else "adapter"

    def tokens_per_micro_batch(self) -> int:
        extra = self.num_virtual_tokens if self.technique == "prompt-tuning" else 0
        return self.batch_size * (self.seq_len + extra)


@dataclass(frozen=True)
class Breakdown:
    """Bytes of each kind of tensor at the moment of the peak's phase (activations: all kept ones)."""

    weights: int
    weights_by_dtype: dict[str, int]
    gradients: int  # trainable parameters only
    optimizer_states: int
    autocast_copies: int  # 16-bit copies of fp32 weights that autocast caches for the step
    activations: int  # what autograd keeps for the backward, for one micro-batch
    logits_and_loss: int  # batch x seq x vocab: logits, their float32 copy, log-softmax and gradients
    optimizer_step_temp: int  # temporaries of the optimizer step (foreach AdamW: one state-sized tensor)
    teacher: int  # distillation: the teacher's weights and logits
    inputs: int  # token ids and labels
    reference: int = 0  # DPO with a frozen copy as the reference: its weights in the compute dtype
    activations_source: str = "formula"  # "measured on a reduced copy (...)" or "formula (...)"


@dataclass(frozen=True)
class Phase:
    name: str  # "forward", "backward", "optimizer step"
    bytes: int  # the tensor total at that phase's largest moment, on one GPU before any sharding
    gradient_bytes: int = 0  # the gradients among them (accumulated ones are counted in the state)


@dataclass(frozen=True)
class RuleOfThumb:
    bytes: int
    rule: str
    label: str = "the book's rule of thumb (chapter 5), not a measurement"


@dataclass(frozen=True)
class GpuVerdict:
    index: int
    name: str
    free_bytes: int
    needed_bytes: int  # total_bytes on this GPU after sharding
    verdict: str  # fits | tight | no


@dataclass(frozen=True)
class Suggestion:
    change: str  # what to change, in words
    flags: str  # the CLI flags that make the change
    total_bytes: int  # the new per-GPU total with this change alone
    saved_bytes: int
    verdict: str  # the verdict on the smallest probed GPU with the change
    trade_off: str  # the row of table 5.2 (or the book's technique) this change is
    speed: str  # table 5.2: what it costs or gives in speed
    memory: str
    difficulty: str
    # the same change as the run spec's dotted fields -> values, in the spec's vocabulary: `llm-wizard train
    # --set key=value` accepts each ({"train.optimizer": "adamw8bit"}, {"distributed.num_processes": 8,
    # "distributed.strategy": "fsdp"}); the wizard applies these, `flags` is for the CLI's printout
    # (engine/estimate/suggest.py FIELDS)
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSummary:
    family: str
    model_type: str
    source: str
    params: int
    trainable_params: int
    layers: int
    hidden: int
    vocab_size: int


@dataclass
class Estimate:
    model: ModelSummary
    rule_of_thumb: RuleOfThumb
    breakdown: Breakdown
    phases: list[Phase]
    peak_phase: str
    peak_bytes: int  # the largest tensor total of a step on one GPU (torch.cuda.max_memory_allocated)
    gpu_count: int  # the GPUs the run is spread over; phases are for one GPU before sharding
    total_bytes: int  # peak + fragmentation margin + CUDA context: compare with nvidia-smi
    margins: dict[str, int]
    gpus: list[GpuVerdict]
    suggestions: list[Suggestion] = field(default_factory=list)
    data: Any = None  # engine.estimate.data_size.DataCheck when a dataset was given
    notes: list[str] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)
    # each part of the breakdown: counted, measured on a reduced copy of the model, or a formula
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rule_of_thumb_bytes"] = self.rule_of_thumb.bytes
        return out


# The technique options a run defaults to when its spec leaves them out (engine/techniques/lora.py and
# prompt_tuning.py DEFAULTS; a test keeps them equal).
RUN_LORA_RANK, RUN_VIRTUAL_TOKENS = 16, 8


def data_options(data: Any) -> tuple[tuple[str, Any], ...]:
    """A spec's data settings (engine.spec.DataSpec) as EstimateRequest.data_options: those DataSource reads."""
    from engine.data.sources import DataSource

    names = {f.name for f in fields(DataSource)} - {"path", "text_column"}
    return tuple((k, v) for k, v in vars(data).items() if k in names)


def request_from_spec(spec: Any, **extra: Any) -> EstimateRequest:
    """The estimate request of the run a spec (engine.spec.RunSpec) configures: the same names and the
    defaults the run itself takes. `extra` sets or replaces the request's other fields (dataset, max_steps, gpus)."""
    m, t, o, scratch = spec.model, spec.train, spec.options, spec.technique == "scratch"
    new = scratch or not m.path  # a model built from the arch and size (distillation's new student too)
    vocab = {"bpe": spec.tokenizer.vocab_size, "byte": 257}.get(spec.tokenizer.kind) if scratch else None
    fields: dict[str, Any] = dict(
        model=None if scratch else m.path or None, arch=m.arch if new else None, size=m.size if new else None,
        layers=(m.layers or None) if new else None, width=(m.width or None) if new else None,
        heads=(m.heads or None) if new else None, vocab_size=vocab, technique=spec.technique,
        teacher=o.get("teacher") or None, finetuning=str(o.get("finetuning", "lora")),
        reference=str(o.get("reference", "auto")), lora_rank=int(o.get("lora_rank", RUN_LORA_RANK)),
        lora_targets=tuple(o.get("lora_targets") or ()) if o.get("lora_targets") != "all-linear" else ("all-linear",),
        num_virtual_tokens=int(o.get("num_virtual_tokens", RUN_VIRTUAL_TOKENS)), precision=t.precision,
        optimizer=t.optimizer, batch_size=t.batch_size, seq_len=t.seq_len, grad_accum=t.grad_accum,
        grad_checkpointing=t.gradient_checkpointing, gpus=spec.distributed.num_processes,
        strategy=spec.distributed.strategy)
    return EstimateRequest(**{**fields, **extra})
