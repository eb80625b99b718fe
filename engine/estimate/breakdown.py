"""The arithmetic of an estimate: bytes of each kind of tensor, phase by phase, sharded over the GPUs.

`breakdown(request, gpus, dims)` returns the Estimate without suggestions or a data check (those are
engine/estimate/memory.py's `estimate`, which calls this). No weights are loaded and torch is not imported.
"""

from __future__ import annotations

from dataclasses import asdict

from engine import vocabulary
from engine.estimate import probe
from engine.estimate.activations import activation_model, timeline
from engine.estimate.params import ParamBytes, bytes_for, parameters, trainable
from engine.estimate.request import (Breakdown, Estimate, EstimateRequest, GpuVerdict, ModelSummary, Phase,
                                     RuleOfThumb)
from engine.models.shape import ModelDims, load_dims

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
    if req.preference:
        return _preference_peak(req, d)
    t = trainable(req, d)
    p = parameters(req, d, t)
    _, e = bytes_for(req.precision)
    if req.technique == "qlora" and req.precision == "fp32":
        e = 4
    T = req.tokens_per_micro_batch()
    mixed = vocabulary.precision(req.precision).mixed and req.technique != "qlora"
    act = activation_model(d, e, t, mixed=mixed, seq=T // req.batch_size)
    source = "formula (Llama-style per-layer model)" if d.family == "other" else f"formula ({d.family} per-layer model)"
    if d.measurable:
        prof = probe.cached(d, probe.variant(req, t))
        if prof is not None:
            act = prof.activations(d, e, mixed, T // req.batch_size, req.batch_size, casts_counted=p.cast_copies > 0)
            source = f"measured on a reduced copy ({prof.attention} attention)"
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
    # Autocast's cache of 16-bit weight copies is emptied when the forward leaves autocast; without
    # checkpointing the graph keeps each layer's copy until its backward, with checkpointing only the layer
    # being recomputed holds one, so the backward carries one layer's copies instead of all of them.
    freed = p.layer_cast_copies * (d.layers - 1) // d.layers if req.grad_checkpointing and d.layers else 0
    phases = [Phase("forward", tl.forward_peak), Phase("backward", tl.backward_peak - freed, tl.backward_grads),
              Phase("optimizer step", tl.step_peak, p.grad_bytes)]
    bd = Breakdown(weights=p.weights, weights_by_dtype=p.by_dtype, gradients=p.grad_bytes,
                   optimizer_states=p.state_bytes, autocast_copies=p.cast_copies, activations=tl.activations,
                   logits_and_loss=tl.logits, optimizer_step_temp=p.step_temp, teacher=t_weights + t_logits,
                   inputs=inputs, activations_source=source)
    return bd, phases, p


def _preference_peak(req: EstimateRequest, d: ModelDims) -> tuple[Breakdown, list[Phase], ParamBytes]:
    """dpo/orpo: the finetuning's own step on twice the sequences (a pair's chosen and rejected answers run in one
    forward), plus DPO's reference. The reference runs before the tuned model's forward, without gradients, so
    its pass is below the step's peak; a frozen copy adds its weights in the compute dtype to every phase, a
    precomputed reference or the adapter switched off adds nothing."""
    from dataclasses import replace

    bd, phases, p = peak(replace(req, technique=req.finetuning, batch_size=2 * req.batch_size), d)
    if req.reference_kind() != "copy":
        return bd, phases, p
    _, e = bytes_for(req.precision)
    copy = d.params * (2 if vocabulary.precision(req.precision).mixed else e)
    return replace(bd, reference=copy), [Phase(ph.name, ph.bytes + copy, ph.gradient_bytes) for ph in phases], p


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
    if req.preference:
        from dataclasses import replace

        return rule_of_thumb(replace(req, technique=req.finetuning), params)
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


def breakdown(req: EstimateRequest, gpus: list[tuple[int, str, int]], d: ModelDims) -> Estimate:
    """The estimate of one step on these GPUs ([(index, name, free bytes)]), without suggestions."""
    bd, phases, p = peak(req, d)
    top = max(phases, key=lambda ph: ph.bytes)
    n = req.gpus or max(1, len(gpus))
    per_gpu = _sharded(req, bd, phases, n, d.layers)
    total = total_for(per_gpu)
    verdicts = [GpuVerdict(i, name, free, total, verdict(total, free)) for i, name, free in gpus]
    notes = []
    if d.family == "other" and bd.activations_source.startswith("formula"):
        notes.append(f"{d.model_type}: activations use the Llama-style per-layer model until they are measured "
                     "(parameters are exact)")
    if vocabulary.precision(req.precision).mixed:
        notes.append("mixed precision: checked against CPU autocast, whose op lists differ a little from CUDA's")
    if not vocabulary.precision(req.precision).trains:
        notes.append(f"{req.precision}: {vocabulary.help_of(vocabulary.PRECISIONS, req.precision)}")
    if req.optimizer == "paged_adamw8bit":
        notes.append("paged 8-bit AdamW: its states live in unified memory and move to the CPU under pressure")
    if req.technique == "distill":
        notes.append("distillation: the teacher runs without gradients; its logits and the KL terms are counted")
    if req.preference:
        ref = {"adapter": "the base with the adapter switched off (no second copy)",
               "precomputed": "log-probs computed once before training (one forward pass a pair, no memory during it)",
               "copy": "a frozen copy of the weights, counted", "none": "none (ORPO)"}[req.reference_kind()]
        notes.append(f"{req.technique} with {req.finetuning}: each pair runs its chosen and rejected sequences "
                     f"together (activations of 2 x batch {req.batch_size}); reference: {ref}")
    if d.dropout > 0:
        notes.append(f"dropout {d.dropout}: a 1-byte mask per element of the residual stream (CUDA)")
    return Estimate(
        model=ModelSummary(d.family, d.model_type, d.source, d.params, p.trainable, d.layers, d.hidden, d.vocab_size),
        rule_of_thumb=rule_of_thumb(req, d.params), breakdown=bd, phases=phases, peak_phase=top.name,
        peak_bytes=per_gpu, gpu_count=n, total_bytes=total,
        margins={"fragmentation": int(per_gpu * FRAGMENTATION_MARGIN), "cuda_context": CUDA_CONTEXT_BYTES},
        gpus=verdicts, notes=notes, request=asdict(req), sources=sources(req, d, bd),
    )


def sources(req: EstimateRequest, d: ModelDims, bd: Breakdown) -> dict[str, str]:
    """Which parts of the estimate are counted, measured or formulas."""
    counted = "counted from the model's tensors" + (" (a one-layer copy, repeated)" if d.family == "other" else "")
    out = {"weights": counted, "gradients": counted, "optimizer_states": counted + " and the optimizer's rules",
           "activations": bd.activations_source,
           "logits_and_loss": "formula (transformers' float32 loss over batch x seq x vocab)",
           "attention": d.attention}
    if req.technique == "qlora":
        out["weights"] += "; NF4 blocks and constants from bitsandbytes' layout"
    return out
