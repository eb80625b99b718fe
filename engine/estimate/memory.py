"""Will it fit? The memory of a training run, from the config and the options, by arithmetic.

`estimate(request)` returns an `Estimate`: the book's rule of thumb, a breakdown (weights per dtype,
gradients, optimizer states, autocast copies, activations, logits and loss, a teacher), the peak
tensor total of one step (phase-aware: the forward/backward peak and the optimizer-step peak are
different moments; the larger one counts), the total with the allocator's and CUDA's margins, a
verdict per GPU and the changes that would make it fit. No weights are loaded and torch is not
imported: a 7B Llama answers in milliseconds. The accuracy of `peak_bytes` is measured against
MemTracker in tests/unit/test_estimate_accuracy.py and bench/estimate_accuracy.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.errors import UserError
from engine.estimate.activations import activation_model, timeline
# NF4_BITS is re-exported: callers read the estimator's constants from engine.estimate.memory
from engine.estimate.params import NF4_BITS, ParamBytes, bytes_for, parameters, trainable  # noqa: F401
from engine.models.shape import ModelDims, load_dims

TECHNIQUES = ("scratch", "full", "lora", "qlora", "prompt-tuning", "distill", "moe")
PRECISIONS = ("fp32", "mixed-bf16", "mixed-fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "sgd", "adafactor")
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
ATTENTIONS = ("sdpa", "eager")

# The CUDA context and kernels loaded by torch: the transformers docs ("Model training anatomy")
# say they "can take up 1-2GB" and measured 1343 MB after a first tiny tensor. Lazy module loading
# (CUDA >= 11.7, torch's default) loads kernels on first use and a training step uses many, so
# 1 GiB is kept, the low end of that range.
CUDA_CONTEXT_BYTES = 1 << 30
# The caching allocator holds more than the tensors: sizes are rounded (512 B, 2 MiB segments
# for large blocks) and freed blocks split. 10% is a judgment from the allocator's documented
# rounding (torch.cuda memory management notes); this project has no GPU to measure it on.
FRAGMENTATION_MARGIN = 0.10
TIGHT_MARGIN = 0.10  # "tight": fits with less than 10% of the GPU's free memory to spare


@dataclass(frozen=True)
class EstimateRequest:
    """What `llm-wizard estimate` takes: the same fields as the run spec's model and train sections."""

    model: str | None = None  # a folder with config.json or a Hub id (config read from the Hub cache)
    arch: str | None = None  # scratch: gpt2 | llama
    size: str | None = None  # scratch: tiny | 10M | 125M | 350M | 1B | 7B
    layers: int | None = None
    width: int | None = None
    heads: int | None = None
    vocab_size: int | None = None  # scratch: the tokenizer's vocabulary (default 32000)
    technique: str = "full"
    teacher: str | None = None  # distillation: the teacher's folder or Hub id
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ()  # module names; empty = peft's default for the family
    num_virtual_tokens: int = 20
    precision: str = "mixed-bf16"
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

    def __post_init__(self) -> None:
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
    # the same change as the run spec's dotted fields -> values in this request's vocabulary
    # ({"train.optimizer": "adamw-8bit"}, {"distributed.num_processes": 8, "distributed.strategy": "fsdp"});
    # the wizard applies these, `flags` is for the CLI's printout (engine/estimate/suggest.py FIELDS)
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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rule_of_thumb_bytes"] = self.rule_of_thumb.bytes
        return out


# --- the arithmetic ----------------------------------------------------------------------------------


def _dequantized(req: EstimateRequest, d: ModelDims) -> int:
    """QLoRA: the largest Linear dequantized to bf16, with its float32 absmax, in the backward."""
    if req.technique != "qlora":
        return 0
    n = max((t.numel for t in d.tensors if t.kind == "linear" and t.layer is not None), default=0)
    return 2 * n + 4 * (n // 64)


def _teacher_bytes(req: EstimateRequest, tokens: int) -> tuple[int, int]:
    """(teacher weights, teacher logits and KL temporaries) for distillation."""
    if req.technique != "distill" or not req.teacher:
        return 0, 0
    td = load_dims(req.teacher)
    elem = 4 if req.precision == "fp32" else 2
    # The KL term at temperature T beside the student's CE: the teacher's logits (model dtype), the
    # student's logits kept by the model output while the loss is built, the softmax target and
    # the student's log-softmax at T (float32, kept for the backward), and their float32 gradients.
    return td.params * elem, tokens * td.vocab_size * (2 * elem + 4 * 4)


def peak(req: EstimateRequest, d: ModelDims) -> tuple[Breakdown, list[Phase], ParamBytes]:
    """The breakdown and the tensor total of each phase of a step, for one GPU without sharding."""
    t = trainable(req, d)
    p = parameters(req, d, t)
    _, e = bytes_for(req.precision)
    if req.technique == "qlora" and req.precision == "fp32":
        e = 4
    T = req.tokens_per_micro_batch()
    act = activation_model(d, e, t, mixed=req.precision.startswith("mixed") and req.technique != "qlora",
                           seq=T // req.batch_size)
    t_weights, t_logits = _teacher_bytes(req, T)
    inputs = 4 * 8 * req.batch_size * req.seq_len  # ids, labels, the loss's padded and shifted labels
    grads_exist = req.grad_accum > 1
    base = p.weights + p.state_bytes + p.cast_copies + inputs + t_weights + (p.grad_bytes if grads_exist else 0)
    tl = timeline(
        base=base, tokens=T, vocab=d.vocab_size, logit_bytes=e, act=act,
        layer_grads=[0] * d.layers if grads_exist else p.layer_grads,
        head_grad=0 if grads_exist else p.head_grad, embed_grad=0 if grads_exist else p.embed_grad,
        grads_exist=grads_exist, checkpointing=req.grad_checkpointing, tied_grad=0 if grads_exist else p.tied_grad,
        weight_transient=_dequantized(req, d),
        step_extra=p.weights + p.grad_bytes + p.state_bytes + p.step_temp + inputs + t_weights,
        teacher_logits=t_logits,
    )
    phases = [Phase("forward", tl.forward_peak), Phase("backward", tl.backward_peak, tl.backward_grads),
              Phase("optimizer step", tl.step_peak, p.grad_bytes)]
    bd = Breakdown(weights=p.weights, weights_by_dtype=p.by_dtype, gradients=p.grad_bytes,
                   optimizer_states=p.state_bytes, autocast_copies=p.cast_copies, activations=tl.activations,
                   logits_and_loss=tl.logits, optimizer_step_temp=p.step_temp, teacher=t_weights + t_logits,
                   inputs=inputs)
    return bd, phases, p


def _sharded(req: EstimateRequest, bd: Breakdown, phases: list[Phase], n: int, layers: int) -> int:
    """The peak on one of `n` GPUs, phase by phase: DDP replicates everything and adds its gradient
    buckets; ZeRO-2 shards gradients and optimizer states; FSDP / ZeRO-3 also shards the weights,
    gathering one layer at a time (and prefetching the next). Activations are never sharded."""
    if n <= 1:
        return max(ph.bytes for ph in phases)
    if req.strategy == "ddp":
        return max(ph.bytes for ph in phases) + bd.gradients  # buckets: a second copy of the gradients
    share = (n - 1) / n
    accum = req.grad_accum > 1
    out = []
    for ph in phases:
        # gradients at this phase's peak: partial in the backward, all of them with accumulation
        grads = bd.gradients if accum else ph.gradient_bytes
        temp = bd.optimizer_step_temp if ph.name == "optimizer step" else 0
        shardable = bd.optimizer_states + grads + temp
        gathered = 0
        if req.strategy in ("fsdp", "zero3"):
            shardable += bd.weights
            gathered = 2 * bd.weights // max(1, layers)
        out.append(int(ph.bytes - shardable * share + gathered))
    return max(out)


def rule_of_thumb(req: EstimateRequest, params: int) -> RuleOfThumb:
    if req.technique == "qlora":
        return RuleOfThumb(params, "fine-tuning with 4-bit quantization: about 1x the parameter count in bytes")
    if req.technique in ("lora", "prompt-tuning"):
        return RuleOfThumb(2 * params, "fine-tuning a 16-bit model with adapters: about 2x the parameter count "
                                       "in bytes")
    return RuleOfThumb(4 * params, "training every weight: more than 4x the parameter count in bytes "
                                   "(a 1B model needs at least 5-6 GB with batch and context)")


def total_for(peak_bytes: int) -> int:
    return int(peak_bytes * (1 + FRAGMENTATION_MARGIN)) + CUDA_CONTEXT_BYTES


def verdict(needed: int, free: int) -> str:
    if needed > free:
        return "no"
    return "tight" if needed > free * (1 - TIGHT_MARGIN) else "fits"


def estimate(req: EstimateRequest, *, gpus: list[tuple[int, str, int]] | None = None,
             dims: ModelDims | None = None, with_suggestions: bool = True,
             progress: Callable[[int, int], None] | None = None) -> Estimate:
    """The full estimate. `gpus` is [(index, name, free bytes)]; None probes this machine.
    `progress(done_bytes, total_bytes)` is called while the dataset's tokens are counted."""
    d = dims or req.dims()
    bd, phases, p = peak(req, d)
    top = max(phases, key=lambda ph: ph.bytes)
    if gpus is None:
        gpus = probe_gpus(req)
    n = req.gpus or max(1, len(gpus))
    per_gpu = _sharded(req, bd, phases, n, d.layers)
    total = total_for(per_gpu)
    verdicts = [GpuVerdict(i, name, free, total, verdict(total, free)) for i, name, free in gpus]
    notes = []
    if d.family == "other":
        notes.append(f"{d.model_type}: activations use the Llama-style per-layer model (parameters are exact)")
    if req.precision.startswith("mixed"):
        notes.append("mixed precision: checked against CPU autocast, whose op lists differ a little from CUDA's")
    if req.optimizer == "paged-adamw-8bit":
        notes.append("paged 8-bit AdamW: its states live in unified memory and move to the CPU under pressure")
    if req.technique == "distill":
        notes.append("distillation: the teacher runs without gradients; its logits and the KL terms are counted")
    if d.dropout > 0:
        notes.append(f"dropout {d.dropout}: a 1-byte mask per element of the residual stream (CUDA)")
    est = Estimate(
        model=ModelSummary(d.family, d.model_type, d.source, d.params, p.trainable, d.layers, d.hidden, d.vocab_size),
        rule_of_thumb=rule_of_thumb(req, d.params), breakdown=bd, phases=phases, peak_phase=top.name,
        peak_bytes=per_gpu, gpu_count=n, total_bytes=total,
        margins={"fragmentation": int(per_gpu * FRAGMENTATION_MARGIN), "cuda_context": CUDA_CONTEXT_BYTES},
        gpus=verdicts, notes=notes, request=asdict(req),
    )
    if with_suggestions and verdicts and any(v.verdict != "fits" for v in verdicts):
        from engine.estimate.suggest import suggestions

        est.suggestions = suggestions(req, d, est, gpus)
    if req.dataset:
        from engine.estimate.data_size import check_data

        est.data = check_data(req.dataset, technique=req.technique, params=d.params, model=req.model,
                              tokens_per_step=req.tokens_per_step(n), text_column=req.text_column,
                              max_steps=req.max_steps, progress=progress)
        if est.data.method.startswith("no tokenizer"):
            est.notes.append("tokens estimated from bytes: no tokenizer for this model "
                             "(scratch trains one on the data)")
    return est


def probe_gpus(req: EstimateRequest) -> list[tuple[int, str, int]]:
    """(index, name, free bytes) of this machine's GPUs; --gpus N repeats the first one N times."""
    from engine.machine.probe import probe_gpus as nvml_gpus

    found, _, _, _ = nvml_gpus()
    listed = [(g.index, g.name, g.memory_free_bytes) for g in found]
    if req.gpus and listed:
        first = listed[0]
        listed = [(i, first[1], first[2]) for i in range(req.gpus)] if req.gpus > len(listed) else listed[: req.gpus]
    return listed

