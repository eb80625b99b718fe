"""A model's shape and parameter tensors, from its config alone: no weights, no torch at run time.

The estimator needs every parameter tensor (name, size, which module kind it belongs to) to say
what trains under LoRA, what 8-bit Adam quantizes (tensors of at least 4096 elements) and what
gradients exist. For the families it knows (GPT-2 and the Llama family: Llama, Mistral, Qwen2/3,
Mixtral) the tensors are enumerated from the config's numbers, which takes microseconds; importing
torch alone takes ~2 s, too slow for an answer in under a second. Other model types are built on
the meta device from the config with one decoder layer (`meta_dims`), whose tensors repeat for every layer:
exact, seconds the first time (importing transformers), then read from the private cache
(engine/models/shape_cache.py). A config transformers cannot build (remote code, never run here) is counted as
a Llama of its numbers where it has them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import UserError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "mixtral")
DEFAULT_SCRATCH_VOCAB = 32000  # Llama 2's vocabulary: the size a BPE tokenizer trained for scratch is capped at


@dataclass(frozen=True)
class ParamTensor:
    name: str  # the module path's last parts, e.g. "layers.3.q_proj.weight"
    numel: int
    module: str  # the module's own name (q_proj, c_attn, embed_tokens, ...): what LoRA targets match
    kind: str  # "embedding", "linear", "norm", "bias", "router", "param" (outside a Linear: fused MoE experts)
    layer: int | None = None  # the decoder layer it belongs to; None for embeddings and the head


@dataclass(frozen=True)
class ModelDims:
    """The numbers of a decoder-only model that memory depends on."""

    family: str  # "gpt2", "llama" (Llama-style: RMSNorm, gated MLP, RoPE) or "other" (meta-counted)
    model_type: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_positions: int
    tie_embeddings: bool
    experts: int = 1  # MoE: experts per layer and how many each token uses
    experts_per_token: int = 1
    dropout: float = 0.0  # residual/embedding dropout; >0 keeps a 1-byte mask per element on CUDA
    attention: str = "sdpa"  # the attention implementation: "sdpa" (flash / memory-efficient) or "eager"
    activation: str = ""  # the MLP's activation (GPT-2 activation_function, Llama hidden_act): what autograd saves
    source: str = ""  # where the numbers came from, for the report
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    tensors: tuple[ParamTensor, ...] = field(default=(), repr=False)
    # "other" models, read off the built copy: each decoder layer's Linear modules (name, in, out), the
    # input embedding's module name (the head shares it when tied: wte, word_embeddings, embed_in...), and
    # peft's default LoRA targets for the model type (None: peft has none, the run must name them)
    linears: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)
    embed_module: str = ""
    lora_defaults: tuple[str, ...] | None = ()
    buildable: bool = True  # False: transformers cannot build it here (remote code): Llama-style formulas only

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def measurable(self) -> bool:
        """A model given by its config (not a scratch shape): its activations are measured on a reduced copy."""
        return self.buildable and bool(self.config) and not self.source.startswith("scratch ")

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    def default_lora_targets(self) -> tuple[str, ...]:
        """peft's defaults for the model type; () where peft has none (the run must name its targets)."""
        if self.family == "other":
            return self.lora_defaults or ()
        return ("c_attn",) if self.family == "gpt2" else ("q_proj", "v_proj")

    @property
    def tied_module(self) -> str:
        """The input embedding's module name when the LM head shares its weight, else ""."""
        if not self.tie_embeddings:
            return ""
        return self.embed_module or ("wte" if self.family == "gpt2" else "embed_tokens")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each Linear in a layer, by module name (GPT-2's two c_proj: 'c_proj' is attention's)."""
        h, i = self.hidden, self.intermediate
        if self.family == "other":
            return {name: (fi, fo) for name, fi, fo in self.linears}
        if self.family == "gpt2":
            return {"c_attn": (h, 3 * h), "c_proj": (h, h), "c_fc": (h, i), "mlp.c_proj": (i, h)}
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def to_transformers_config(self, **overrides: Any) -> Any:
        """The transformers config (imports transformers: for measurement and training, not estimates)."""
        from transformers import AutoConfig

        cfg = dict(self.config)
        cfg.update(overrides)
        model_type = cfg.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg)
        config._attn_implementation = self.attention
        return config

    def with_dropout(self, p: float) -> ModelDims:
        cfg = dict(self.config)
        for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if key in cfg or self.family == "gpt2":
                cfg[key] = p
        return replace(self, dropout=p, config=cfg)


# --- enumeration by family ---------------------------------------------------------------------------


def _gpt2_tensors(v: int, h: int, n: int, i: int, pos: int) -> list[ParamTensor]:
    out = [ParamTensor("wte.weight", v * h, "wte", "embedding"), ParamTensor("wpe.weight", pos * h, "wpe", "embedding")]
    for k in range(n):
        p = f"h.{k}."
        out += [
            ParamTensor(p + "ln_1.weight", h, "ln_1", "norm", k), ParamTensor(p + "ln_1.bias", h, "ln_1", "bias", k),
            ParamTensor(p + "attn.c_attn.weight", h * 3 * h, "c_attn", "linear", k),
            ParamTensor(p + "attn.c_attn.bias", 3 * h, "c_attn", "bias", k),
            ParamTensor(p + "attn.c_proj.weight", h * h, "c_proj", "linear", k),
            ParamTensor(p + "attn.c_proj.bias", h, "c_proj", "bias", k),
            ParamTensor(p + "ln_2.weight", h, "ln_2", "norm", k), ParamTensor(p + "ln_2.bias", h, "ln_2", "bias", k),
            ParamTensor(p + "mlp.c_fc.weight", h * i, "c_fc", "linear", k),
            ParamTensor(p + "mlp.c_fc.bias", i, "c_fc", "bias", k),
            ParamTensor(p + "mlp.c_proj.weight", i * h, "mlp.c_proj", "linear", k),
            ParamTensor(p + "mlp.c_proj.bias", h, "mlp.c_proj", "bias", k),
        ]
    out += [ParamTensor("ln_f.weight", h, "ln_f", "norm"), ParamTensor("ln_f.bias", h, "ln_f", "bias")]
    return out  # the LM head is tied to wte


def _llama_tensors(d: ModelDims, cfg: dict[str, Any]) -> list[ParamTensor]:
    h, i, v = d.hidden, d.intermediate, d.vocab_size
    qkv_bias = bool(cfg.get("attention_bias", d.model_type == "qwen2"))
    qk_norm = d.model_type == "qwen3"
    out = [ParamTensor("embed_tokens.weight", v * h, "embed_tokens", "embedding")]
    for k in range(d.layers):
        p = f"layers.{k}."
        out.append(ParamTensor(p + "input_layernorm.weight", h, "input_layernorm", "norm", k))
        for name, (fi, fo) in (("q_proj", (h, d.q_dim)), ("k_proj", (h, d.kv_dim)), ("v_proj", (h, d.kv_dim)),
                               ("o_proj", (d.q_dim, h))):
            out.append(ParamTensor(p + f"self_attn.{name}.weight", fi * fo, name, "linear", k))
            if qkv_bias and name != "o_proj":
                out.append(ParamTensor(p + f"self_attn.{name}.bias", fo, name, "bias", k))
        if qk_norm:
            out += [ParamTensor(p + "self_attn.q_norm.weight", d.head_dim, "q_norm", "norm", k),
                    ParamTensor(p + "self_attn.k_norm.weight", d.head_dim, "k_norm", "norm", k)]
        out.append(ParamTensor(p + "post_attention_layernorm.weight", h, "post_attention_layernorm", "norm", k))
        if d.experts > 1:
            out.append(ParamTensor(p + "block_sparse_moe.gate.weight", h * d.experts, "gate", "router", k))
            for e in range(d.experts):
                q = p + f"block_sparse_moe.experts.{e}."
                out += [ParamTensor(q + "w1.weight", h * i, "w1", "linear", k),
                        ParamTensor(q + "w3.weight", h * i, "w3", "linear", k),
                        ParamTensor(q + "w2.weight", i * h, "w2", "linear", k)]
        else:
            for name in ("gate_proj", "up_proj", "down_proj"):
                out.append(ParamTensor(p + f"mlp.{name}.weight", h * i, name, "linear", k))
    out.append(ParamTensor("norm.weight", h, "norm", "norm"))
    if not d.tie_embeddings:
        out.append(ParamTensor("lm_head.weight", v * h, "lm_head", "linear"))
    return out


def dims_from_config(cfg: dict[str, Any], source: str = "") -> ModelDims:
    """ModelDims from a config.json's contents; unknown model types are counted on the meta device."""
    d = _dims_from_config(cfg, source)
    # transformers uses SDPA where the model supports it (the built copy says which: BLOOM and Gemma-2 run
    # eager), unless the config asks for another implementation
    attention = str(cfg.get("_attn_implementation") or cfg.get("attn_implementation") or d.attention)
    return replace(d, attention="eager" if attention == "eager" else "sdpa")


def _dims_from_config(cfg: dict[str, Any], source: str, buildable: bool = True) -> ModelDims:
    mt = str(cfg.get("model_type", ""))
    try:
        if mt == "gpt2":
            h, n = int(cfg.get("n_embd", 768)), int(cfg.get("n_layer", 12))
            heads = int(cfg.get("n_head", 12))
            i = int(cfg.get("n_inner") or 4 * h)
            v, pos = int(cfg.get("vocab_size", 50257)), int(cfg.get("n_positions", 1024))
            drop = max(float(cfg.get("resid_pdrop", 0.1)), float(cfg.get("embd_pdrop", 0.1)))
            d = ModelDims("gpt2", mt, v, h, n, heads, heads, h // heads, i, pos, True, dropout=drop,
                          activation=str(cfg.get("activation_function", "gelu_new")), source=source, config=cfg)
            return replace(d, tensors=tuple(_gpt2_tensors(v, h, n, i, pos)))
        if mt in LLAMA_LIKE or not buildable:
            h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            kv = int(cfg.get("num_key_value_heads") or heads)
            hd = int(cfg.get("head_dim") or h // heads)
            experts = int(cfg.get("num_local_experts", 1) or 1)
            d = ModelDims("llama", mt, int(cfg["vocab_size"]), h, int(cfg["num_hidden_layers"]), heads, kv, hd,
                          int(cfg["intermediate_size"]), int(cfg.get("max_position_embeddings", 2048)),
                          bool(cfg.get("tie_word_embeddings", False)), experts=experts,
                          experts_per_token=int(cfg.get("num_experts_per_tok", 1) or 1),
                          activation=str(cfg.get("hidden_act", "silu")), source=source, config=cfg)
            d = replace(d, tensors=tuple(_llama_tensors(d, cfg)))
            if not buildable:  # remote code is never run to estimate: its numbers, counted as Llama's
                d = replace(d, family="llama", buildable=False,
                            source=f"{source} (remote code, not run: counted as a Llama of its numbers)")
            return d
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{source or 'config'}: config.json lacks or garbles {err} for model_type {mt!r}",
                        field="model") from None
    try:
        return meta_dims(cfg, source)
    except UserError:
        if not _llama_numbers(cfg):  # nothing to count it by
            raise
    return _dims_from_config(cfg, source, buildable=False)  # the formulas, as the fallback


def _llama_numbers(cfg: dict[str, Any]) -> bool:
    return all(cfg.get(k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                                    "intermediate_size"))


def meta_dims(cfg: dict[str, Any], source: str) -> ModelDims:
    """Any other causal LM: a one-layer copy built on the meta device, its layer's tensors repeated for every
    layer (exact, and a fraction of building the whole model). Read once per config and library versions,
    then from the private cache (engine.models.shape_cache), so later estimates do not import torch."""
    from engine.models import shape_cache

    key = shape_cache.key("dims", cfg)
    found = shape_cache.read(key)
    if found is None:
        found = _reduced_copy_tensors(cfg, source)
        shape_cache.write(key, found)
    layers = int(found["layers"])
    tensors = [ParamTensor(n, int(k), m, kind, None) for n, k, m, kind in found["shared"]]
    for layer in range(layers):
        tensors += [ParamTensor(n.replace(".0.", f".{layer}.", 1), int(k), m, kind, layer)
                    for n, k, m, kind in found["layer"]]
    g = lambda *keys, default=0: next((int(cfg[k]) for k in keys if cfg.get(k)), default)  # noqa: E731
    h = g("hidden_size", "n_embd", "d_model")
    heads = g("num_attention_heads", "n_head", default=max(1, h // 64))
    return ModelDims("other", str(cfg.get("model_type")), int(found["vocab"]), h, layers, heads,
                     g("num_key_value_heads", default=heads), g("head_dim", default=h // heads if heads else h),
                     g("intermediate_size", "n_inner", "ffn_dim", default=4 * h),
                     g("max_position_embeddings", "n_positions", default=2048), bool(found["tied"]),
                     activation=str(cfg.get("hidden_act") or cfg.get("activation_function") or ""), source=source,
                     config=cfg, tensors=tuple(tensors), attention=str(found["attention"]),
                     linears=tuple((n, int(i), int(o)) for n, i, o in found["linears"]),
                     embed_module=str(found["embed_module"]),
                     lora_defaults=tuple(found["lora_defaults"]) if found["lora_defaults"] is not None else None)


def reduced_config(cfg: dict[str, Any], layers: int) -> Any:
    """The transformers config of `cfg` with `layers` decoder layers (per-layer lists cut to match)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(**cfg)
    config.num_hidden_layers = layers
    for name in ("layer_types", "mlp_only_layers", "no_rope_layers"):
        value = getattr(config, name, None)
        if isinstance(value, list) and len(value) > layers:
            setattr(config, name, value[:layers])
    return config


def _reduced_copy_tensors(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        import torch
        from transformers import AutoModelForCausalLM

        full_layers = int(_full_layers(cfg))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(reduced_config(cfg, 1))
    except Exception as err:  # an unknown model_type or a config transformers cannot build
        reason = str(err).split(". Should contain one of")[0][:200]  # not transformers' list of every type
        raise UserError(f"{source}: cannot build model_type {cfg.get('model_type')!r} from its config ({reason})",
                        field="model") from None
    kinds: dict[str, str] = {}
    linears: list[tuple[str, int, int]] = []
    for name, mod in model.named_modules():
        kind = ("embedding" if isinstance(mod, torch.nn.Embedding) else
                "linear" if isinstance(mod, torch.nn.Linear) else "")
        kinds[name] = kind
        if kind == "linear" and _layer_of(name) is not None:
            linears.append((name.rsplit(".", 1)[-1], mod.in_features, mod.out_features))
    shared, layer = [], []
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        kind = kinds.get(owner) or ("norm" if p.dim() == 1 and leaf == "weight" else
                                    "bias" if p.dim() == 1 else "param")
        if leaf == "bias" and kind in ("linear", "embedding"):
            kind = "bias"
        row = (name, p.numel(), owner.rsplit(".", 1)[-1] if owner else leaf, kind)
        (shared if _layer_of(name) is None else layer).append(row)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight is inp.weight
    embed_module = next((n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is inp), "")
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

        defaults = PEFT_TARGETS.get(str(cfg.get("model_type")))
    except ImportError:
        defaults = None
    return {"layers": full_layers, "shared": shared, "layer": layer, "tied": tied, "vocab": inp.num_embeddings,
            "attention": str(model.config._attn_implementation or "eager"), "linears": linears,
            "embed_module": embed_module, "lora_defaults": list(defaults) if defaults else None}


def _full_layers(cfg: dict[str, Any]) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.for_model(**cfg).num_hidden_layers)


def _layer_of(name: str) -> int | None:
    """The decoder layer of a parameter or module path (the first number in it: "model.layers.3.mlp...")."""
    return next((int(x) for x in name.split(".") if x.isdigit()), None)


# --- where configs come from -------------------------------------------------------------------------


def read_config(model: str) -> tuple[dict[str, Any], str]:
    """config.json of a local folder, or of a Hub id: from the Hub cache when there, else from the Hub with
    the user's token (engine/hub/repo.py says gated, unknown or offline, and why)."""
    path = Path(os.path.expanduser(model))
    if path.exists():
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise UserError(f"{path} has no config.json: point --model at a folder saved with save_pretrained",
                            field="model")
        where = str(cfg_path)
    else:
        if model.startswith((".", "/", "~")) or model.count("/") > 1:
            raise UserError(f"model folder {model} does not exist", field="model")
        from engine.hub.repo import fetch_file

        cfg_path, where = fetch_file(model, "config.json", field="model"), f"{model} (Hub cache)"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {cfg_path}: {err}", field="model") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path} is not a JSON object", field="model")
    return cfg, where


def scratch_config(arch: str, layers: int, width: int, heads: int, kv_heads: int | None, mlp: int,
                   vocab_size: int, max_seq_len: int) -> dict[str, Any]:
    """The config.json that engine.models.architectures.build_config would write, without importing transformers."""
    if arch == "gpt2":
        return {"model_type": "gpt2", "vocab_size": vocab_size, "n_positions": max_seq_len, "n_embd": width,
                "n_layer": layers, "n_head": heads, "n_inner": mlp, "bos_token_id": 0, "eos_token_id": 0,
                "activation_function": "gelu_pytorch_tanh",
                # the scratch technique sets dropout from the run spec (engine/spec.py), 0 unless asked
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    if arch == "llama":
        return {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": width, "intermediate_size": mlp,
                "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads or heads, "max_position_embeddings": max_seq_len,
                "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
    raise UserError(f"unknown architecture {arch!r}: choose gpt2 or llama", field="arch")


def load_dims(model: str | None = None, *, arch: str | None = None, size: str | None = None,
              layers: int | None = None, width: int | None = None, heads: int | None = None,
              vocab_size: int | None = None, max_seq_len: int = 2048) -> ModelDims:
    """The model a request names: a config folder or Hub id, or a scratch architecture and size."""
    if model:
        cfg, where = read_config(model)
        return dims_from_config(cfg, where)
    from engine.models.architectures import shape_for

    arch = arch or "llama"
    shape = shape_for(size or "tiny", layers=layers, width=width, heads=heads)
    vocab = vocab_size or DEFAULT_SCRATCH_VOCAB
    if vocab <= 0:
        raise UserError(f"vocab size must be positive, got {vocab}", field="vocab_size")
    cfg = scratch_config(arch, shape.layers, shape.width, shape.heads, shape.kv_heads, shape.mlp_width(arch),
                         vocab, max_seq_len)
    return dims_from_config(cfg, f"scratch {arch} {size or 'tiny'}")
