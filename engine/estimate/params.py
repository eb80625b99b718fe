"""Bytes of weights, gradients and optimizer states, tensor by tensor, for a precision and optimizer.

Per tensor because the rules are per tensor: bitsandbytes keeps 8-bit state only for tensors of at
least 4096 elements, QLoRA quantizes only the decoder layers' Linear weights, peft keeps adapters in
float32, and gradients appear layer by layer in the backward (engine.estimate.activations.timeline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine import vocabulary
from engine.errors import UserError
from engine.estimate.activations import LORA_DTYPE_BYTES, Trainable
from engine.estimate.request import EstimateRequest
from engine.models.shape import ModelDims

# NF4 with double quantization: 4 bits + an fp8 absmax per 64 weights + an fp32 absmax per 256 of
# those = 4 + 8/64 + 32/(64*256) = 4.127 bits (QLoRA paper, section 3; measured 4.13 in DESIGN.md).
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
# Each quantized Linear also keeps its code tables: NF4's 16 float32 values, the double
# quantization's 256, and a float32 offset (bitsandbytes QuantState; measured with MemTracker).
NF4_TABLE_BYTES = 16 * 4 + 256 * 4 + 4


def nf4_bytes(numel: int) -> int:
    """Bytes of one NF4 weight with double quantization: packed nibbles, an 8-bit absmax per 64
    weights, a float32 absmax per 256 of those, and the code tables."""
    blocks = math.ceil(numel / 64)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / 256) + NF4_TABLE_BYTES
# bitsandbytes keeps 8-bit state only for tensors of at least this many elements (min_8bit_size
# in bitsandbytes.optim.optimizer.Optimizer8bit); smaller ones get 32-bit state.
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256  # blockwise quantization: one float32 absmax per 256 values, per state


def bytes_for(precision: str) -> tuple[int, int]:
    """(bytes of a trainable weight, bytes of an activation element) for a precision (engine.vocabulary's)."""
    p = vocabulary.precision(precision)
    return (4 if p.weights == "fp32" else 2), (4 if p.compute == "fp32" else 2)


@dataclass(frozen=True)
class ParamBytes:
    """Bytes of the parameters and what training keeps for them, and where the gradients appear."""

    weights: int
    by_dtype: dict[str, int]
    trainable: int  # count
    grad_bytes: int
    layer_grads: list[int]
    head_grad: int
    embed_grad: int
    tied_grad: int  # the embedding shared with the LM head (GPT-2), when it trains
    state_bytes: int
    step_temp: int
    cast_copies: int
    layer_cast_copies: int = 0  # the decoder layers' share of cast_copies


def _expand_targets(d: ModelDims, targets: tuple[str, ...]) -> frozenset[str]:
    names = {t.rsplit(".", 1)[-1] if d.family == "other" else t for t in targets}  # peft matches by suffix
    if "all-linear" in names:  # peft's shorthand: every Linear of the decoder layers
        names.discard("all-linear")
        names |= set(d.linear_shapes())
    if d.family == "gpt2" and "c_proj" in names:
        names.add("mlp.c_proj")  # peft matches by suffix: "c_proj" is both of GPT-2's projections
    return frozenset(names)


def _layer_linears(d: ModelDims) -> list[tuple[str, int, int]]:
    """Every Linear of one decoder layer as (name, in, out), repeated names included."""
    if d.family == "other":
        return list(d.linears)
    return [(name, fi, fo) for name, (fi, fo) in d.linear_shapes().items()]


def _adapter_bytes(req: EstimateRequest) -> int:
    """peft keeps adapters and virtual tokens in fp32; pure bf16 casts every parameter to bf16
    (engine/run/train_state.py `to_weight_dtype`)."""
    return 2 if vocabulary.precision(req.precision).weights == "bf16" else LORA_DTYPE_BYTES


def trainable(req: EstimateRequest, d: ModelDims) -> Trainable:
    if req.technique in ("lora", "qlora"):
        known = set(d.linear_shapes()) | {"lm_head"}
        named = req.lora_target_names(d)
        if not named:  # peft has no default list for this model type and refuses the run
            raise UserError(f"peft has no default LoRA targets for {d.model_type}: name them with --lora-targets "
                            f"(its Linear modules: {', '.join(sorted(known))})", field="lora_targets")
        targets = _expand_targets(d, named)
        missing = sorted(targets - known)
        if missing:  # the run refuses these (engine/techniques/lora.py target_modules), as peft would
            raise UserError(f"LoRA targets {', '.join(missing)}: no such Linear in this {d.model_type} model; "
                            f"its Linear modules are {', '.join(sorted(known))}", field="lora_targets")
        return Trainable(full=False, lora_targets=targets, lora_rank=req.lora_rank,
                         adapter_bytes=_adapter_bytes(req))
    if req.technique == "prompt-tuning":
        return Trainable(full=False, inputs_need_grad=True, adapter_bytes=_adapter_bytes(req))
    return Trainable(full=True)


def _state_bytes(optimizer: str, numel: int, elem: int, shape2d: tuple[int, int] | None) -> tuple[int, int]:
    """(optimizer state bytes, step temporaries) for one trainable tensor."""
    if optimizer == "adamw":
        # exp_avg, exp_avg_sq, step; the trainer's fused AdamW (engine/run/train_state.py) updates in one
        # kernel without a parameter-sized temporary
        return 2 * numel * elem + 4, 0
    if optimizer == "sgd":
        return numel * elem, 0  # momentum buffer
    if optimizer in ("adamw8bit", "paged_adamw8bit"):
        if numel < BNB_MIN_8BIT_SIZE:
            return 2 * numel * 4, 0
        return 2 * numel + 2 * 4 * math.ceil(numel / BNB_BLOCK), 0
    if optimizer == "adafactor":  # factored second moment: a row and a column vector per matrix
        return (sum(shape2d) if shape2d else numel) * elem, numel * elem
    raise AssertionError(optimizer)


def parameters(req: EstimateRequest, d: ModelDims, t: Trainable) -> ParamBytes:
    w_train, _ = bytes_for(req.precision)
    precision = vocabulary.precision(req.precision)
    frozen = 4 if req.precision == "fp32" else 2
    by_dtype: dict[str, int] = {}
    shapes = d.linear_shapes()

    def add(dtype: str, n: float) -> None:
        by_dtype[dtype] = by_dtype.get(dtype, 0) + int(round(n))

    layer_grads = [0] * d.layers
    head = embed = tied = grads = states = temp = casts = layer_casts = n_trainable = 0
    tname = {4: "fp32", 2: "fp16" if precision.compute == "fp16" else "bf16"}
    for p in d.tensors:
        if t.full:
            add(tname[w_train], p.numel * w_train)
            g = p.numel * w_train
            n_trainable += p.numel
            matrix = p.kind in ("linear", "embedding")
            shape = (shapes.get(p.module) or (p.numel // d.hidden, d.hidden)) if matrix else None
            s, tmp = _state_bytes(req.optimizer, p.numel, w_train, shape)
            states, temp = states + s, temp + tmp
            if precision.mixed and p.kind == "linear":
                casts += p.numel * 2  # autocast's cached 16-bit copy of an fp32 Linear weight
                layer_casts += p.numel * 2 if p.layer is not None else 0
            if p.layer is not None:
                layer_grads[p.layer] += g
            elif p.kind == "embedding" and p.module != d.tied_module:
                embed += g
            else:
                head += g  # the LM head (or the tied embedding it shares), final norm
                if p.kind == "embedding":
                    tied = g
            grads += g
        elif req.technique == "qlora" and p.kind == "linear" and p.layer is not None:
            add("nf4", nf4_bytes(p.numel))
        else:
            add(tname[frozen], p.numel * frozen)
    if t.lora_targets:
        per_layer = 0
        for name, fi, fo in _layer_linears(d):
            if name in t.lora_targets:
                n = t.lora_rank * (fi + fo)
                per_layer += n
                for numel, shape in ((t.lora_rank * fi, (t.lora_rank, fi)), (fo * t.lora_rank, (fo, t.lora_rank))):
                    s, tmp = _state_bytes(req.optimizer, numel, t.adapter_bytes, shape)
                    states, temp = states + s * d.layers, temp + tmp * d.layers
        add(tname[t.adapter_bytes], per_layer * d.layers * t.adapter_bytes)
        n_trainable += per_layer * d.layers
        layer_grads = [per_layer * t.adapter_bytes] * d.layers
        grads = per_layer * d.layers * t.adapter_bytes
    if t.inputs_need_grad:  # prompt tuning: the virtual token embeddings, float32 (bf16 under pure bf16)
        n, v = req.num_virtual_tokens * d.hidden, t.adapter_bytes
        add(tname[v], n * v)
        n_trainable += n
        s, temp = _state_bytes(req.optimizer, n, v, (req.num_virtual_tokens, d.hidden))
        states, embed, grads = states + s, n * v, n * v
    return ParamBytes(sum(by_dtype.values()), by_dtype, n_trainable, grads, layer_grads, head, embed, tied, states,
                      temp, casts, layer_casts)
