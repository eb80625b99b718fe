"""Activations measured on the model itself, for architectures the per-layer formulas were not written for.

A reduced copy of the model (its own config with 1 and 2 decoder layers, or 0 and 2 where layers alternate,
such as Gemma-2's sliding and global attention) runs a forward pass and the loss under torch's FakeTensorMode,
so nothing is allocated, with saved-tensor hooks that add up the storages autograd keeps for the backward (each
storage once, parameters and buffers left out). Three sequence lengths at batch 1 fit, per decoder layer and for
the rest of the model (embeddings, final norm, head, loss), bytes = c0 + c1 s + c2 s^2: linear for SDPA, the
s x s scores of eager attention are the quadratic term. Saved bytes grow linearly with the batch (every op is
batch-independent) and with the layer count. The fit is cached per config, attention implementation, precision
and what trains (engine.models.shape_cache), so only the first estimate of an architecture builds anything.

What the measurement covers: whatever the model's code saves (parallel blocks, ALiBi biases, soft-capped
logits, MoE routing and expert inputs, fused qkv projections, LoRA branches on any Linear, upcasts). What stays
arithmetic (engine/estimate/activations.py `timeline`): the order of the backward and its transient gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import vocabulary
from engine.estimate.activations import ActivationModel, Trainable
from engine.models import shape_cache
from engine.models.shape import ModelDims

SEQS = (32, 64, 128)  # three points fit c0 + c1 s + c2 s^2 exactly (saved bytes are such a polynomial)
# A layer's backward rise is the largest of several moments, which may change places as s grows: measured at
# longer sequences, where training runs, so that the fit extrapolates from the moment that wins there
TRANSIENT_SEQS = (128, 256, 512)
_MEMO: dict[str, Profile | None] = {}  # this process's profiles (and failures), by cache key


@dataclass(frozen=True)
class Profile:
    """Saved-tensor bytes at batch 1 as polynomials in the sequence length s: (c0, c1, c2)."""

    layer: tuple[float, float, float]  # one decoder layer (the mean over the measured ones)
    rest: tuple[float, float, float]  # everything outside the layers, with the loss's float32 log-softmax
    attention: str
    # a layer's backward above the moment it starts, its parameters' gradients left out (they are counted):
    # gradients of its ops, and with checkpointing its recomputed forward (MemTracker's per-module peak)
    transient: tuple[float, float, float] = (0.0, 0.0, 0.0)
    transient_fixed: float = 0.0  # the part of that rise that does not grow with the batch (weights' casts)

    def activations(self, d: ModelDims, e: int, mixed: bool, seq: int, batch: int, casts_counted: bool
                    ) -> ActivationModel:
        """The timeline's per-token model at sequence length `seq` and micro-batch `batch`. The constant term
        does not grow with the batch (autocast's 16-bit copies of the weights, which `casts_counted` says the
        parameter count already holds); the rest does."""
        c0 = 0.0 if casts_counted else 1.0
        at = lambda c: c0 * c[0] / batch + c[1] * seq + c[2] * seq * seq  # noqa: E731
        fixed = self.transient_fixed
        rise = fixed / batch + (self.transient[0] - fixed) + self.transient[1] * seq + self.transient[2] * seq * seq
        per_layer = max(0, round(at(self.layer) / seq))
        # the loss's log-softmax (float32, batch x seq x vocab) is the timeline's own term
        final = max(0, round(at(self.rest) / seq) - 4 * d.vocab_size)
        return ActivationModel(per_layer=(per_layer,) * d.layers, embedding=0, final=final,
                               layer_input=(4 if mixed else e) * d.hidden, input_shared=True,
                               transient=max(0, round(rise / seq)), hidden_grad=0,
                               recompute_in_transient=True)


def variant(req: Any, t: Trainable) -> dict[str, Any]:
    """What decides the saved tensors besides the config: precision, what trains, checkpointing."""
    technique = req.finetuning if req.preference else req.technique
    return {"precision": req.precision, "full": t.full, "checkpointing": req.grad_checkpointing, "targets": sorted(t.lora_targets), "rank": t.lora_rank,
            "prompt": t.inputs_need_grad, "adapter_bytes": t.adapter_bytes,
            "frozen_16bit": technique in ("lora", "qlora", "prompt-tuning") and req.precision != "fp32"}


def cached(d: ModelDims, v: dict[str, Any]) -> Profile | None:
    """The profile from this process or the private cache, without measuring."""
    key = _key(d, v)
    if key in _MEMO:
        return _MEMO[key]
    found = shape_cache.read(key)
    if found is None:
        return None
    prof = Profile(tuple(found["layer"]), tuple(found["rest"]), str(found["attention"]),
                   tuple(found["transient"]), float(found["transient_fixed"])) if found["ok"] else None
    _MEMO[key] = prof
    return prof


def known(d: ModelDims, v: dict[str, Any]) -> bool:
    """Whether this variant was measured (or failed to measure) already."""
    key = _key(d, v)
    return key in _MEMO or shape_cache.read(key) is not None


def ensure(d: ModelDims, v: dict[str, Any], note: Callable[[str], None] | None = None) -> Profile | None:
    """The profile, measured now when no cache has it; None where the model cannot run under fake tensors."""
    if known(d, v):
        return cached(d, v)
    if note:
        note(f"measuring {d.model_type}'s activations once on a reduced copy (cached for later estimates)")
    key = _key(d, v)
    try:
        prof: Profile | None = measure(d, v)
    except Exception:  # an op without a fake implementation, remote code: the formulas answer
        prof = None
    _MEMO[key] = prof
    shape_cache.write(key, {"ok": prof is not None, "layer": prof.layer if prof else None,
                            "rest": prof.rest if prof else None, "attention": prof.attention if prof else None,
                            "transient": prof.transient if prof else None,
                            "transient_fixed": prof.transient_fixed if prof else None})
    return prof


def _key(d: ModelDims, v: dict[str, Any]) -> str:
    return shape_cache.key("activations", d.config, attention=d.attention, **v)


def _fit(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """c0 + c1 s + c2 s^2 through three points (Lagrange)."""
    (s0, y0), (s1, y1), (s2, y2) = points
    d0, d1, d2 = (s0 - s1) * (s0 - s2), (s1 - s0) * (s1 - s2), (s2 - s0) * (s2 - s1)
    c2 = y0 / d0 + y1 / d1 + y2 / d2
    c1 = -(y0 * (s1 + s2) / d0 + y1 * (s0 + s2) / d1 + y2 * (s0 + s1) / d2)
    c0 = y0 * s1 * s2 / d0 + y1 * s0 * s2 / d1 + y2 * s0 * s1 / d2
    return c0, c1, c2


def measure(d: ModelDims, v: dict[str, Any]) -> Profile:
    """Fit the saved bytes of reduced copies of the model (see the module's docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    alternating = len(set((d.config.get("layer_types") or [])[:2])) > 1
    counts = (0, 2) if alternating else (1, 2)
    fits: dict[int, tuple[float, float, float]] = {}
    with FakeTensorMode(allow_non_fake_inputs=True), _grouped_mm_fallback():
        for n in counts:
            model = _reduced_model(d, v, n)
            fits[n] = _fit([(s, _saved_bytes(model, d, v, s)) for s in SEQS])
        transient = _fit([(s, _layer_backward(model, d, v, s)) for s in TRANSIENT_SEQS])
        s0 = TRANSIENT_SEQS[0]
        fixed = 2 * _layer_backward(model, d, v, s0) - _layer_backward(model, d, v, s0, batch=2)
    lo, hi = counts
    layer = tuple((fits[hi][k] - fits[lo][k]) / (hi - lo) for k in range(3))
    rest = tuple(fits[lo][k] - lo * layer[k] for k in range(3))
    return Profile(layer, rest, d.attention, transient, max(0.0, fixed))  # type: ignore[arg-type]


def _reduced_model(d: ModelDims, v: dict[str, Any], layers: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models.shape import reduced_config

    config = reduced_config(d.config, layers)
    config._attn_implementation = d.attention
    pure = vocabulary.precision(v["precision"]).weights == "bf16"
    dtype = torch.bfloat16 if pure or v["frozen_16bit"] else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if not v["full"]:
        model.requires_grad_(False)
    if v["targets"]:
        _wrap_lora(model, set(v["targets"]), v["rank"], torch.bfloat16 if v["adapter_bytes"] == 2 else torch.float32)
    if v["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def _wrap_lora(model: Any, targets: set[str], rank: int, dtype: Any) -> None:
    """peft's LoRA forward for dropout 0 (peft cannot move modules under fake tensors): the adapter in its own
    dtype reads its own cast of the input."""
    import torch

    class LoraLinear(torch.nn.Module):
        def __init__(self, base: Any) -> None:
            super().__init__()
            self.base_layer = base
            self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False, dtype=dtype)
            self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False, dtype=dtype)

        def forward(self, x: Any) -> Any:
            result = self.base_layer(x)
            return (result + self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * 2.0).to(result.dtype)

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, torch.nn.Linear):
                setattr(module, name, LoraLinear(child))


def _saved_bytes(model: Any, d: ModelDims, v: dict[str, Any], seq: int) -> float:
    """Bytes of the distinct storages autograd saves in the forward pass and the loss, at batch 1."""
    import torch

    own = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: Any) -> Any:
        st = t.untyped_storage()
        if st._cdata not in own:
            saved[st._cdata] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _forward(model, d, v, seq, checkpointing=False)
    return float(sum(saved.values()))


def _forward(model: Any, d: ModelDims, v: dict[str, Any], seq: int, checkpointing: bool = True,
             batch: int = 1) -> Any:
    """The loss of one micro-batch, as the trainer computes it (the model's output freed)."""
    import torch

    mixed = vocabulary.precision(v["precision"]).mixed
    ids = torch.randint(0, d.vocab_size, (batch, seq))
    was = model.is_gradient_checkpointing
    if was and not checkpointing:
        model.gradient_checkpointing_disable()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            if v["prompt"]:  # prompt tuning: gradients flow from the (virtual) input embeddings on
                embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
                return model(inputs_embeds=embeds, labels=ids, use_cache=False).loss
            return model(input_ids=ids, labels=ids, use_cache=False).loss
    finally:
        if was and not checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _layer_backward(model: Any, d: ModelDims, v: dict[str, Any], seq: int, batch: int = 1) -> float:
    """The largest rise of memory inside one decoder layer's backward above its start, less the gradients of
    its own parameters (MemTracker's per-module snapshots)."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker, _ModState

    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) and
              all(isinstance(x, torch.nn.Module) for x in m)]
    blocks = list(max(layers, key=len)) if layers else []
    tracker = MemTracker()
    skip_frozen_grad_hooks(tracker)
    tracker.track_external(model)
    with tracker:
        loss = _forward(model, d, v, seq, batch=batch)
        loss.backward()
    rises = []
    for block in blocks:
        stats = tracker.memory_tracking.get(block)
        if stats is None or _ModState.PRE_BW not in stats.snapshots:
            continue
        dev = torch.device("cpu")
        start = stats.snapshots[_ModState.PRE_BW][-1][dev]["Total"]
        grads = sum(p.numel() * p.element_size() for p in block.parameters() if p.requires_grad)
        rises.append(stats.local_peak.get(dev, start) - start - grads)
    model.zero_grad(set_to_none=True)
    return float(max(rises, default=0))


def skip_frozen_grad_hooks(tracker: Any) -> None:
    """MemTracker registers a gradient hook on every parameter; a frozen one refuses it."""
    import types

    original = type(tracker)._track_module_params_and_buffers

    def patched(self: Any, module: Any, install_grad_hooks: bool = True) -> tuple[int, int]:
        frozen = [p for p in module.parameters() if not p.requires_grad]
        for p in frozen:
            self._param_to_grad_hook_handles.setdefault(p, ())
        try:
            return original(self, module, install_grad_hooks)
        finally:
            for p in frozen:
                if self._param_to_grad_hook_handles.get(p) == ():
                    del self._param_to_grad_hook_handles[p]

    tracker._track_module_params_and_buffers = types.MethodType(patched, tracker)


@contextlib.contextmanager
def _grouped_mm_fallback() -> Any:
    """MoE experts through transformers' grouped-matmul fallback op, which has a fake-tensor implementation
    and saves what the fused kernel saves (the sorted inputs; the weights are parameters)."""
    try:
        from transformers.integrations import moe
    except ImportError:
        yield
        return
    original = getattr(moe, "_can_use_grouped_mm", None)
    if original is None:
        yield
        return
    moe._can_use_grouped_mm = lambda *a, **k: False
    try:
        yield
    finally:
        moe._can_use_grouped_mm = original
