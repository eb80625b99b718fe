"""Measure the tensor memory of one training step with PyTorch's own tools.

Shared by tests/unit/test_estimate_accuracy.py and bench/estimate_accuracy.py, so that the estimator is
checked against measurements and never against numbers written into a test.

One step of a causal LM built from a config (random init, no download) is run twice: the first
step creates the optimizer state, the second runs inside `MemTracker`, whose peak is the largest
sum of live tensor storages (each storage counted once) at any moment: what
`torch.cuda.max_memory_allocated` reports on a GPU, without the allocator's rounding. Under
`FakeTensorMode` (``fake=True``) nothing is allocated, so shapes of billions of parameters can be
measured on a CPU machine; peft cannot move modules there, so LoRA is wrapped by hand for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.estimate.memory import EstimateRequest
from engine.estimate.probe import skip_frozen_grad_hooks as _skip_frozen_grad_hooks  # MemTracker vs frozen weights
from engine.models.shape import ModelDims
from engine.run.train_state import to_weight_dtype
from preference_measure import preference_loss, reference_module


@dataclass(frozen=True)
class Measured:
    peak_bytes: int  # MemTracker's peak over the second step
    weight_bytes: int  # exact bytes of the parameters (and buffers) after the step
    grad_bytes: int  # gradients after backward, before zero_grad
    optimizer_bytes: int  # optimizer state after the step
    trainable_params: int
    total_params: int


def _storage_bytes(tensors: Any) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()  # one entry per storage, also under FakeTensorMode
    return sum(seen.values())


class _LoraLinear:
    """A LoRA-wrapped Linear built by hand (peft cannot move modules under FakeTensorMode)."""

    @staticmethod
    def wrap(base: Any, rank: int, alpha: float) -> Any:
        import torch

        class LoraLinear(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.base_layer = base
                # peft upcasts adapters to float32 (autocast_adapter_dtype=True)
                self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False, dtype=torch.float32)
                self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False, dtype=torch.float32)
                torch.nn.init.zeros_(self.lora_B.weight)
                self.scaling = alpha / rank

            def forward(self, x: Any) -> Any:
                # peft's LoRA forward for dropout 0: the input cast to the adapter's dtype
                result = self.base_layer(x)
                lora = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling
                return (result + lora).to(result.dtype)

        return LoraLinear()


def _apply_lora(model: Any, req: EstimateRequest, fake: bool) -> Any:
    targets = list(req.lora_target_names())
    if not fake:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=req.lora_rank, lora_alpha=2 * req.lora_rank, lora_dropout=0.0,
                         target_modules=targets, task_type="CAUSAL_LM")
        return get_peft_model(model, cfg)
    import torch

    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, torch.nn.Linear):
                setattr(module, child_name, _LoraLinear.wrap(child, req.lora_rank, 2 * req.lora_rank))
    return model


def _quantize_4bit(model: Any) -> list[Any]:
    """QLoRA's base: every decoder-layer Linear as a bitsandbytes NF4 Linear4bit with double
    quantization and bf16 compute (what BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=
    "nf4", bnb_4bit_use_double_quant=True) loads); the LM head stays 16-bit, as transformers leaves it.
    Returns the quantization state tensors, which are neither parameters nor buffers."""
    import bitsandbytes as bnb
    import torch

    state: list[Any] = []
    for layer in model.model.layers:
        for name, module in list(layer.named_modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4")
                q = q.to("cpu")  # quantizes
                setattr(module, child_name, q)
                qs = q.weight.quant_state
                state += [qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code]
    model.is_loaded_in_4bit = True  # peft wraps Linear4bit with its bnb LoRA layer
    return [t for t in state if t is not None]


def _apply_prompt_tuning(model: Any, req: EstimateRequest) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=req.num_virtual_tokens,
                             prompt_tuning_init=PromptTuningInit.RANDOM)
    return get_peft_model(model, cfg)


def _optimizer(req: EstimateRequest, params: list[Any]) -> Any:
    import torch

    # AdamW fused, as the trainer builds it (engine/run/train_state.py); SGD foreach=True, what PyTorch picks
    # on CUDA (on the CPU it would pick the per-tensor loop, whose temporaries are smaller)
    if req.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if req.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)
    if req.optimizer in ("adamw8bit", "paged_adamw8bit"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4)
    if req.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-3, foreach=True)
    raise ValueError(req.optimizer)


def measurable_dims(req: EstimateRequest) -> ModelDims:
    """The request's model with dropout off: on the CPU dropout keeps float masks and runs attention
    through the math kernel, on CUDA a 1-byte mask and flash attention; without dropout both agree."""
    return req.dims().with_dropout(0.0)


def build_model(req: EstimateRequest, fake: bool = False, dims: ModelDims | None = None) -> tuple[Any, list[Any]]:
    """The model the request describes, random init, on the CPU (or fake), and any tensors it
    holds outside its parameters and buffers (QLoRA's quantization state)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = (dims or measurable_dims(req)).to_transformers_config()
    torch.manual_seed(0)
    technique = req.finetuning if req.preference else req.technique  # dpo/orpo: what trains
    # A frozen base is loaded in 16 bits unless the run is fp32 (mixed precision trains fp32 adapters)
    frozen_base = technique in ("lora", "qlora", "prompt-tuning") and req.precision != "fp32"
    dtype = torch.bfloat16 if req.precision == "bf16-pure" or frozen_base or technique == "qlora" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    extra: list[Any] = []
    if req.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if technique == "qlora":
        extra = _quantize_4bit(model)
    if technique in ("lora", "qlora"):
        model = _apply_lora(model, req, fake)
    elif technique == "prompt-tuning":
        model = _apply_prompt_tuning(model, req)
    # pure bf16 as the run engine configures it: adapters and virtual tokens (fp32 from peft) in bf16 too
    to_weight_dtype(model, req.precision)
    model.train()
    return model, extra


DISTILL_TEMPERATURE = 2.0
DISTILL_ALPHA = 0.5


def _teacher(req: EstimateRequest, fake: bool) -> Any:
    """The distillation teacher: frozen, in eval mode, in the run's 16-bit or 32-bit dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models.shape import load_dims

    dtype = torch.float32 if req.precision == "fp32" else torch.bfloat16
    teacher = AutoModelForCausalLM.from_config(load_dims(req.teacher).to_transformers_config(), dtype=dtype)
    teacher.eval().requires_grad_(False)
    return teacher


def _loss(model: Any, teacher: Any | None, ids: Any) -> Any:
    """The causal-LM loss; with a teacher, the book's distillation loss (listing 5.4):
    alpha x CE + (1 - alpha) x KL(teacher/T || student/T) x T^2. A function, so that the model's
    output (and its logits) is freed before the backward, as in a trainer's compute_loss."""
    import torch
    import torch.nn.functional as F

    # use_cache=False as every technique trains (engine/techniques): GPT-2's KV cache would keep k and v
    out = model(input_ids=ids, labels=ids, use_cache=False)
    if teacher is None:
        return out.loss
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, use_cache=False).logits
    T = DISTILL_TEMPERATURE
    kl = F.kl_div(F.log_softmax(out.logits.float() / T, dim=-1), F.softmax(t_logits.float() / T, dim=-1),
                  reduction="batchmean") * T * T
    return DISTILL_ALPHA * out.loss + (1 - DISTILL_ALPHA) * kl


def measure(req: EstimateRequest, fake: bool = False, dims: ModelDims | None = None) -> Measured:
    """Peak tensor bytes of one steady-state training step of `req` on this machine."""
    import contextlib

    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    ctx: Any
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        ctx = FakeTensorMode(allow_non_fake_inputs=True)
    else:
        ctx = contextlib.nullcontext()
    from engine.estimate.probe import _grouped_mm_fallback

    with ctx, (_grouped_mm_fallback() if fake else contextlib.nullcontext()):
        dims = dims or measurable_dims(req)
        model, extra = build_model(req, fake, dims)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = _optimizer(req, params)
        b, s = req.batch_size, req.seq_len
        vocab = dims.vocab_size

        teacher = _teacher(req, fake) if req.technique == "distill" else None
        reference = reference_module(req, model) if req.preference else None

        def step(tracker: Any | None) -> int:
            grads = 0
            for _ in range(req.grad_accum):
                ids = torch.randint(0, vocab, (2 * b, s + 1) if req.preference else (b, s))
                if tracker is not None:
                    tracker.reset_mod_stats()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=req.precision == "bf16"):
                    if req.preference:
                        loss = preference_loss(req, model, reference, ids) / req.grad_accum
                    else:
                        loss = _loss(model, teacher, ids) / req.grad_accum
                loss.backward()
                grads = _storage_bytes(p.grad for p in params)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return grads

        # The optimizer state, as every step after the first has it (zero gradients are enough to
        # create it, and cheaper than a forward and backward)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tracker = MemTracker()
        _skip_frozen_grad_hooks(tracker)
        tracker.track_external(model, opt, *extra, *([teacher] if teacher is not None else []),
                               *([reference] if reference is not None and req.reference_kind() == "copy" else []))
        with tracker:
            grad_bytes = step(tracker)
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
        state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        return Measured(
            peak_bytes=int(peak),
            weight_bytes=_storage_bytes([*model.parameters(), *model.buffers(), *extra]),
            grad_bytes=grad_bytes,
            optimizer_bytes=_storage_bytes(state),
            trainable_params=sum(p.numel() for p in params),
            total_params=sum(p.numel() for p in model.parameters()),
        )


def ratio(estimate: int, measured: int) -> float:
    return estimate / measured if measured else math.inf


# --- the cases both the tests and the bench measure ---------------------------------------------------
# "act": activations dominate (wide enough, long sequences, small vocabulary);
# "opt": the optimizer step dominates (big embeddings, one short sequence).
_ACT = dict(size="tiny", width=128, heads=4, layers=2, vocab_size=256, batch_size=2, seq_len=128)
_OPT = dict(size="tiny", width=256, heads=4, layers=2, vocab_size=4000, batch_size=1, seq_len=16)

CASES: dict[str, dict[str, Any]] = {
    "llama full fp32 adamw act": dict(arch="llama", technique="full", precision="fp32", **_ACT),
    "llama full fp32 adamw opt": dict(arch="llama", technique="full", precision="fp32", **_OPT),
    "llama full bf16-pure adamw act": dict(arch="llama", technique="full", precision="bf16-pure", **_ACT),
    "llama full bf16-pure sgd opt": dict(arch="llama", technique="full", precision="bf16-pure", optimizer="sgd", **_OPT),
    "llama full fp32 adamw8bit opt": dict(arch="llama", technique="full", precision="fp32", optimizer="adamw8bit", **_OPT),
    "llama full bf16-pure adamw8bit act": dict(arch="llama", technique="full", precision="bf16-pure", optimizer="adamw8bit", **_ACT),
    "llama full bf16-pure adafactor opt": dict(arch="llama", technique="full", precision="bf16-pure", optimizer="adafactor", **_OPT),
    "llama full fp32 adamw ckpt act": dict(arch="llama", technique="full", precision="fp32", grad_checkpointing=True, **_ACT),
    "llama full bf16-pure adamw ckpt act": dict(arch="llama", technique="full", precision="bf16-pure", grad_checkpointing=True, **_ACT),
    "llama scratch fp32 adamw accum2": dict(arch="llama", technique="scratch", precision="fp32", grad_accum=2, **_ACT),
    "gpt2 full fp32 adamw act": dict(arch="gpt2", technique="full", precision="fp32", **_ACT),
    "gpt2 full bf16-pure sgd opt": dict(arch="gpt2", technique="full", precision="bf16-pure", optimizer="sgd", **_OPT),
    "gpt2 full fp32 adamw ckpt act": dict(arch="gpt2", technique="full", precision="fp32", grad_checkpointing=True, **_ACT),
    "gpt2 full bf16-pure adamw8bit opt": dict(arch="gpt2", technique="full", precision="bf16-pure", optimizer="adamw8bit", **_OPT),
    "llama full bf16 adamw act": dict(arch="llama", technique="full", precision="bf16", **_ACT),
    "gpt2 full bf16 adamw act": dict(arch="gpt2", technique="full", precision="bf16", **_ACT),
    "llama lora bf16-pure adamw act": dict(arch="llama", technique="lora", precision="bf16-pure", **_ACT),
    "llama lora fp32 all-linear ckpt": dict(arch="llama", technique="lora", precision="fp32", grad_checkpointing=True,
                                            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"), **_ACT),
    "llama lora bf16 adamw act": dict(arch="llama", technique="lora", precision="bf16", **_ACT),
    "gpt2 lora fp32 adamw act": dict(arch="gpt2", technique="lora", precision="fp32", **_ACT),
    "llama qlora bf16-pure adamw act": dict(arch="llama", technique="qlora", precision="bf16-pure", **_ACT),
    "llama qlora bf16-pure adamw opt ckpt": dict(arch="llama", technique="qlora", precision="bf16-pure",
                                            grad_checkpointing=True, **_OPT),
    "llama distill fp32 adamw act": dict(arch="llama", technique="distill", teacher="{teacher}", precision="fp32", **_ACT),
    "llama distill bf16-pure adamw act": dict(arch="llama", technique="distill", teacher="{teacher}", precision="bf16-pure", **_ACT),
    "mixtral moe fp32 adamw act": dict(model="{mixtral}", technique="moe", precision="fp32", batch_size=2, seq_len=128),
    "llama lora bf16-pure eager s512": dict(arch="llama", technique="lora", precision="bf16-pure", attention="eager",
                                       **{**_ACT, "batch_size": 1, "seq_len": 512}),
    "gpt2 full bf16-pure eager s512": dict(arch="gpt2", technique="full", precision="bf16-pure", attention="eager",
                                      **{**_ACT, "batch_size": 1, "seq_len": 512}),
    # GPT-2's own default activation, gelu_new (Python ops, four saved tensors); the arch="gpt2" cases
    # above use the fused gelu_pytorch_tanh that engine.models.architectures.build_config writes
    "gpt2 gelu_new full fp32 adamw act": dict(model="{gpt2_gelu_new}", technique="full", precision="fp32",
                                              batch_size=2, seq_len=128),
    # the scratch GPT-2 config exactly as the trainer builds it (engine.models.architectures.build_config)
    "gpt2 scratch build_config fp32 act": dict(model="{gpt2_build_config}", technique="scratch", precision="fp32",
                                               batch_size=2, seq_len=128),
    "llama prompt-tuning bf16-pure act": dict(arch="llama", technique="prompt-tuning", precision="bf16-pure", **_ACT),
    # pure bf16 as `train.precision = "bf16-pure"` runs it: a scratch model, and GPT-2 LoRA with bf16 adapters
    "gpt2 scratch bf16-pure adamw act": dict(arch="gpt2", technique="scratch", precision="bf16-pure", **_ACT),
    "gpt2 lora bf16-pure adamw opt": dict(arch="gpt2", technique="lora", precision="bf16-pure", **_OPT),
    "gpt2 prompt-tuning fp32 opt": dict(arch="gpt2", technique="prompt-tuning", precision="fp32", **_OPT),
    # preference tuning: a pair's chosen and rejected sequences in one forward; DPO's reference the adapter
    # switched off (LoRA), a frozen copy, or precomputed (nothing during the step)
    "llama dpo lora bf16-pure act": dict(arch="llama", technique="dpo", finetuning="lora", precision="bf16-pure", **_ACT),
    "llama dpo full fp32 copy act": dict(arch="llama", technique="dpo", finetuning="full", reference="copy",
                                         precision="fp32", **_ACT),
    "llama dpo full bf16-pure precomputed opt": dict(arch="llama", technique="dpo", finetuning="full",
                                                     precision="bf16-pure", **_OPT),
    "gpt2 orpo lora fp32 act": dict(arch="gpt2", technique="orpo", finetuning="lora", precision="fp32", **_ACT),
}


# Measured by the bench only, to keep the test suite's CPU time down: each repeats a path that a
# test case already covers, in another precision or shape.
BENCH_ONLY = frozenset({
    "llama full bf16-pure adamw8bit act", "llama full bf16-pure adamw ckpt act", "gpt2 full bf16 adamw act",
    "llama lora bf16 adamw act", "llama distill fp32 adamw act", "llama qlora bf16-pure adamw opt ckpt",
    "gpt2 full bf16-pure eager s512", "llama dpo full bf16-pure precomputed opt", "gpt2 orpo lora fp32 act",
})

# A small Mixtral: 4 experts, 2 per token.
MIXTRAL = dict(model_type="mixtral", vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
_FOLDERS: dict[str, str] = {}

from arch_cases import ARCH_CASES, ARCH_TESTED, ARCHS, fake_case  # noqa: E402,F401  (the other families' cases)

CASES.update(ARCH_CASES)
BENCH_ONLY = BENCH_ONLY | (frozenset(ARCH_CASES) - ARCH_TESTED)


def _config_folder(key: str, config: dict[str, Any]) -> str:
    """A folder with this config.json, written once per process."""
    if key not in _FOLDERS:
        import json
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp(prefix=f"llmw-{key}-"))
        (folder / "config.json").write_text(json.dumps(config))
        _FOLDERS[key] = str(folder)
    return _FOLDERS[key]


def case_request(name: str) -> EstimateRequest:
    """The request of a case, with its config folders written: the Mixtral, and a distillation
    teacher of the student's shape with twice the layers."""
    kw = dict(CASES[name])
    if str(kw.get("model", "")).startswith("{arch:"):
        key = kw["model"][6:-1]
        kw["model"] = _config_folder(key, ARCHS[key])
    if kw.get("model") == "{mixtral}":
        kw["model"] = _config_folder("mixtral", MIXTRAL)
    if kw.get("model") == "{gpt2_gelu_new}":
        gpt2 = EstimateRequest(arch="gpt2", **{k: _ACT[k] for k in ("size", "width", "heads", "layers", "vocab_size")})
        kw["model"] = _config_folder("gpt2-gelu-new", {**gpt2.dims().config, "activation_function": "gelu_new"})
    if kw.get("model") == "{gpt2_build_config}":
        from engine.models.architectures import build_config, shape_for

        shape = shape_for("tiny", layers=_ACT["layers"], width=_ACT["width"], heads=_ACT["heads"])
        cfg = build_config("gpt2", shape, vocab_size=_ACT["vocab_size"], max_seq_len=1024).to_dict()
        kw["model"] = _config_folder("gpt2-build-config", cfg)
    if kw.get("teacher") == "{teacher}":
        student = EstimateRequest(**{**kw, "technique": "full", "teacher": None}).dims()
        kw["teacher"] = _config_folder("teacher", {**student.config, "num_hidden_layers": 2 * student.layers})
    return EstimateRequest(**kw)
