"""What autograd keeps between forward and backward, per decoder layer, and when the peak happens.

The sizes below are the tensors autograd saves, read off the graph of transformers' GPT-2 and Llama
(SDPA attention) and checked against MemTracker (tests/unit/test_estimate_accuracy.py):

- Llama RMSNorm keeps its input in fp32 (the input itself in fp32, an fp32 copy in 16-bit) and the
  rsqrt; with a trainable weight also the normalised tensor. Linear layers with a trainable weight
  keep their input (q/k/v share one, gate/up share one). SDPA (flash / memory-efficient) keeps
  q, k, v, its output and a float32 logsumexp per head, never the s x s matrix. The gated MLP keeps
  gate output, SiLU output and up output where gradients flow.
- GPT-2 keeps LayerNorm inputs, the fused qkv output (with use_cache=True, as every technique
  trains without, the KV cache would keep copies of k and v too), and what its MLP
  activation saves (ACTIVATION_SAVES): a fused kernel (gelu, gelu_pytorch_tanh, silu) keeps its
  input only, GPT-2's default gelu_new is written in Python ops and keeps four tensors of the MLP width.
- Eager attention keeps the softmax of the s x s scores per head (Llama's in float32 plus a 16-bit
  copy), which makes its bytes per token grow with the sequence length.
- A frozen Linear keeps no input; nothing below the lowest trainable tensor keeps anything.
- peft computes a LoRA branch in float32 (its adapters are upcast): with 16-bit activations each
  adapted Linear keeps its own float32 copy of its input.
- The loss upcasts logits to float32 and keeps log-softmax; its backward briefly holds three
  batch x seq x vocab float32 tensors, which dominates at long context with large vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.shape import ModelDims

LORA_DTYPE_BYTES = 4  # peft upcasts adapter weights to float32 (autocast_adapter_dtype=True); pure bf16: 2

# What autograd saves for transformers' ACT2FN activations, in tensors of the input's size: (besides the
# output, whether the output itself is saved). The output is usually kept anyway by the next Linear or
# by Llama's act * up. Measured with saved_tensors_hooks (tests/unit/test_estimate.py checks every entry).
ACTIVATION_SAVES: dict[str, tuple[int, bool]] = {
    "gelu": (1, False), "gelu_pytorch_tanh": (1, False), "silu": (1, False), "swish": (1, False),
    "gelu_new": (4, False), "gelu_python_tanh": (4, False), "gelu_accurate": (4, False), "gelu_fast": (7, False),
    "gelu_python": (3, False), "gelu_10": (2, False), "quick_gelu": (2, False), "relu": (0, True),
    "relu2": (1, False), "relu6": (1, False), "leaky_relu": (1, False), "mish": (1, False),
    "hardswish": (1, False), "laplace": (1, False), "sigmoid": (0, True), "tanh": (0, True),
    "sqrtsoftplus": (1, True), "linear": (0, False),
}
UNKNOWN_ACTIVATION = (4, False)  # as gelu_new: a Python-composed activation, the common case among the rest


def activation_saves(name: str) -> tuple[int, bool]:
    """(tensors of the MLP width the activation keeps besides its output, whether it keeps its output)."""
    return ACTIVATION_SAVES.get(name, UNKNOWN_ACTIVATION)


@dataclass(frozen=True)
class Trainable:
    """Which parts of the model train, as the activation model needs it."""

    full: bool  # every base weight trains (scratch, full, distill, moe)
    lora_targets: frozenset[str] = frozenset()
    lora_rank: int = 0
    inputs_need_grad: bool = False  # prompt tuning: the virtual tokens train, so grads flow from the start
    adapter_bytes: int = LORA_DTYPE_BYTES  # a LoRA adapter's or virtual token's element (bf16 under pure bf16)


@dataclass(frozen=True)
class ActivationModel:
    """Bytes per token kept by autograd, by part of the model."""

    per_layer: tuple[int, ...]  # each decoder layer, bottom to top
    embedding: int  # token ids for the embedding's backward, dropout mask
    final: int  # the final norm and the LM head's input
    layer_input: int  # one layer's input (what gradient checkpointing keeps per layer)
    input_shared: bool  # the layer's own saved tensors include its input (not kept twice when checkpointing)
    transient: int  # gradients alive inside one layer's backward
    hidden_grad: int  # the gradient of the residual stream
    # measured (engine/estimate/probe.py): `transient` is a layer's whole backward rise, its incoming gradient
    # and, with checkpointing, its recomputed forward included
    recompute_in_transient: bool = False


def _lora_saves(name: str, in_dim: int, e: int, t: Trainable, shared_input_saved: bool, casts: set[str]) -> int:
    """Bytes a LoRA branch on `name` keeps: its input (in the adapter's dtype) and A's output (rank)."""
    if name not in t.lora_targets:
        return 0
    out = t.adapter_bytes * t.lora_rank
    if e != t.adapter_bytes:
        out += t.adapter_bytes * in_dim  # its own copy of the input in the adapter's dtype
    elif not shared_input_saved and "in" not in casts:
        out += e * in_dim  # the input itself, kept once for all branches that read it
        casts.add("in")
    return out


def _llama_layer(d: ModelDims, e: int, t: Trainable, grad_in: bool, mixed: bool, seq: int) -> tuple[int, bool]:
    h, i = d.hidden, d.intermediate * max(1, d.experts_per_token)
    saved = 0
    if mixed and t.full:
        # autocast: the residual stream and the norms stay float32 (2 x 2h more), and each Linear
        # casts its float32 input for itself (q, k, v: two more 16-bit copies; gate, up: one more)
        saved += 4 * h + 6 * h
    # input RMSNorm
    if grad_in:
        saved += 4 * h + 4
    if t.full:
        saved += e * h  # normalised input, for the weight's gradient
    y_grad = grad_in or t.full
    if t.full:
        saved += e * h  # q/k/v input
    shared: set[str] = set()
    for name in ("q_proj", "k_proj", "v_proj"):
        saved += _lora_saves(name, h, e, t, t.full, shared)
    attn_grad = y_grad or bool({"q_proj", "k_proj", "v_proj"} & t.lora_targets)
    if attn_grad and d.attention == "eager":
        # q, k and v repeated to every head, the output; the float32 softmax (and its 16-bit cast)
        # of the s x s scores: this is where eager attention grows with the sequence length
        saved += e * 4 * d.q_dim + d.heads * seq * (4 + (e if e != 4 else 0))
    elif attn_grad:
        saved += e * (2 * d.q_dim + 2 * d.kv_dim) + 4 * d.heads  # q, k, v, output, logsumexp
    saved += _lora_saves("o_proj", d.q_dim, e, t, attn_grad, set())  # input = SDPA output, kept by SDPA
    res_grad = grad_in or attn_grad or "o_proj" in t.lora_targets
    # post-attention RMSNorm
    if res_grad:
        saved += 4 * h + 4
    if t.full:
        saved += 2 * e * h  # normalised input, and gate/up's input
    y2_grad = res_grad or t.full
    shared = set()
    for name in ("gate_proj", "up_proj"):
        saved += _lora_saves(name, h, e, t, t.full, shared)
    g_grad = y2_grad or "gate_proj" in t.lora_targets
    u_grad = y2_grad or "up_proj" in t.lora_targets
    act_saves, act_out = activation_saves(d.activation or "silu")
    if g_grad:
        saved += act_saves * e * i  # what the activation keeps (SiLU: its input)
    if u_grad or (g_grad and act_out):
        saved += e * i  # the activation's output, for act * up
    if g_grad:
        saved += e * i  # up output, for act * up
    prod_grad = g_grad or u_grad
    if t.full:
        saved += e * i  # down_proj input
    saved += _lora_saves("down_proj", i, e, t, t.full, set())
    if d.experts > 1 and (res_grad or t.full):
        saved += e * h + 4 * d.experts  # router input and its softmax
    return saved, res_grad or prod_grad or "down_proj" in t.lora_targets


def _gpt2_layer(d: ModelDims, e: int, t: Trainable, grad_in: bool, mask: int, mixed: bool,
                seq: int) -> tuple[int, bool]:
    h, i = d.hidden, d.intermediate
    saved = 0
    if mixed and (grad_in or t.full):
        saved += 2 * 2 * h  # autocast keeps the residual stream, the LayerNorms' input, in float32
    if grad_in or t.full:
        saved += e * h + 8  # ln_1 input, mean and rstd
    if t.full:
        saved += e * h  # c_attn input
    saved += _lora_saves("c_attn", h, e, t, t.full, set())
    attn_grad = grad_in or t.full or "c_attn" in t.lora_targets
    if attn_grad and d.attention == "eager":
        # copies of q, k, v for the matmuls, the output, the softmax of the s x s scores (and its
        # dropout mask)
        saved += e * 4 * h + d.heads * seq * (e + mask)
    elif attn_grad:
        saved += e * (3 * h + h) + 4 * d.heads  # qkv, output, logsumexp (no KV cache in training)
    saved += _lora_saves("c_proj", h, e, t, attn_grad, set())  # input = SDPA output, kept by SDPA
    res_grad = attn_grad or "c_proj" in t.lora_targets
    if res_grad:
        saved += mask * h  # residual dropout mask
    if res_grad or t.full:
        saved += e * h + 8  # ln_2 input, mean and rstd
    if t.full:
        saved += e * h  # c_fc input
    saved += _lora_saves("c_fc", h, e, t, t.full, set())
    fc_grad = res_grad or t.full or "c_fc" in t.lora_targets
    act_saves, act_out = activation_saves(d.activation or "gelu_new")
    if fc_grad:
        saved += act_saves * e * i  # what the activation keeps (fused GELU: its input; gelu_new: four tensors)
    if t.full or (fc_grad and act_out):
        saved += e * i  # c_proj input, the activation's output
    saved += _lora_saves("mlp.c_proj", i, e, t, t.full, set())
    if fc_grad:
        saved += mask * h  # MLP dropout mask
    return saved, res_grad or fc_grad


def activation_model(d: ModelDims, e: int, t: Trainable, mixed: bool = False, seq: int = 1) -> ActivationModel:
    """Bytes per token for activation element size `e` (4 for fp32, 2 for 16-bit); `mixed`: autocast
    over float32 weights (16-bit matmuls, float32 residual stream and norms); `seq`: the sequence
    length (eager attention keeps s x s scores, so its bytes per token grow with it)."""
    # A dropout mask is one byte an element on CUDA (native_dropout keeps a bool mask).
    mask = 1 if d.dropout > 0 else 0
    grad_in = t.full or t.inputs_need_grad
    embedding = (8 if t.full else 0) + (mask * d.hidden if grad_in else 0)
    layers = []
    for _ in range(d.layers):
        if d.family == "gpt2":
            saved, grad_in = _gpt2_layer(d, e, t, grad_in, mask, mixed, seq)
        else:
            saved, grad_in = _llama_layer(d, e, t, grad_in, mixed, seq)
        layers.append(saved)
    head_trains = t.full or "lm_head" in t.lora_targets
    if d.family == "gpt2":
        final = (e * d.hidden + 8 if grad_in else 0) + (e * d.hidden if head_trains else 0)
    else:
        final = (4 * d.hidden + 4 if grad_in else 0) + (2 * e * d.hidden if head_trains else 0)
    i = d.intermediate * max(1, d.experts_per_token)
    # The largest moment of a layer's backward is the MLP product's: its input gradient and the two
    # gradients it makes (3 x MLP width) while its own saved input is already freed: 2 x MLP width,
    transient = (1 if d.family == "gpt2" else 2) * e * i
    if d.attention == "eager":
        # or the attention's: one gradient of the s x s scores (Llama's softmax runs in float32)
        scores = e if d.family == "gpt2" else 4
        transient = max(transient, d.heads * seq * scores)
    return ActivationModel(
        per_layer=tuple(layers), embedding=embedding, final=final, layer_input=e * d.hidden,
        input_shared=d.family == "gpt2" or e == 4, transient=transient, hidden_grad=e * d.hidden,
    )


@dataclass(frozen=True)
class Timeline:
    forward_peak: int  # at the loss, all activations kept
    backward_peak: int  # the largest moment of the backward pass
    backward_grads: int  # the gradient bytes alive at that moment (sharded by ZeRO-2/3 and FSDP)
    step_peak: int  # the optimizer step
    activations: int  # everything kept for the backward (without the loss's own tensors)
    logits: int  # the loss's largest moment: logits and their float32 gradients


def timeline(*, base: int, tokens: int, vocab: int, logit_bytes: int, act: ActivationModel,
             layer_grads: list[int], head_grad: int, embed_grad: int, grads_exist: bool,
             checkpointing: bool, step_extra: int, teacher_logits: int = 0, tied_grad: int = 0,
             weight_transient: int = 0) -> Timeline:
    """The tensor total at each moment of one micro-batch's forward and backward, and the step.

    `base` is what lives throughout (weights, optimizer state, inputs, and the gradients when
    accumulation keeps them between micro-batches: `grads_exist`). `layer_grads` are the gradient
    bytes each layer's backward allocates, bottom to top; they are 0 when `grads_exist`.
    `tied_grad`: an embedding shared with the LM head gets two gradients that autograd holds until
    both exist and then sums: three embedding-sized tensors at the end of the backward.
    `weight_transient`: a weight materialised for one matmul (QLoRA's backward dequantizes each
    4-bit Linear to 16 bits to compute its input gradient).
    """
    T, L = tokens, len(act.per_layer)
    kept = [T * a for a in act.per_layer]
    if checkpointing:
        inputs = [T * act.layer_input] * L  # each checkpointed layer keeps only its input
    else:
        inputs = kept
    embed_kept = T * act.embedding
    final_kept = T * act.final
    all_kept = embed_kept + sum(inputs) + final_kept
    cast = 4 * T * vocab if logit_bytes != 4 else 0  # logits.float()
    lsm = 4 * T * vocab
    forward = base + all_kept + T * vocab * logit_bytes + cast + lsm + teacher_logits
    # backward: log_softmax kept, its incoming gradient and its output gradient, all float32
    moments = [(base + all_kept + 3 * lsm + teacher_logits, 0)]  # (bytes, gradient bytes among them)
    # LM head: the logits' gradient in the model dtype, the head's weight gradient, the hidden grad
    grads = head_grad
    moments.append((base + all_kept + T * vocab * logit_bytes + grads + T * act.hidden_grad, grads))
    remaining = all_kept - final_kept
    for k in reversed(range(L)):
        # recomputed activations of this layer (its input is already counted among the kept inputs)
        live_layer = kept[k] - (T * act.layer_input if act.input_shared else 0) if checkpointing else 0
        if act.recompute_in_transient:
            live_layer = 0
        grads += layer_grads[k]
        moments.append((base + remaining + live_layer + grads + T * (act.transient + act.hidden_grad)
                        + weight_transient, grads))
        remaining -= inputs[k]
    grads += embed_grad
    moments.append((base + grads + embed_kept + T * act.hidden_grad + 2 * tied_grad, grads + 2 * tied_grad))
    bwd, bwd_grads = max(moments)
    return Timeline(forward_peak=forward, backward_peak=bwd, backward_grads=bwd_grads, step_peak=step_extra,
                    activations=all_kept, logits=max(3 * lsm, T * vocab * logit_bytes + cast + lsm))
