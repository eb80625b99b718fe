"""Mixture-of-experts fine-tune (book 5.3, listing 5.5): every weight of a pretrained MoE model trains,
with the router's load-balancing loss added so that tokens keep spreading over the experts.

Causal MoE models (Mixtral, Qwen2-MoE, ...: anything whose forward takes `output_router_logits`) train
on next-token cross-entropy + aux_loss_coef x the model's auxiliary loss. Switch Transformers (the
listing's google/switch-base-8) is an encoder-decoder: each block is cut in two, the encoder reads the
first half and the decoder learns to continue with the second (the listing's collator with mlm=False
makes labels = inputs, a copy task); its loss adds the auxiliary and router z-losses of encoder and
decoder with the config's coefficients.

Metrics (at the logging interval): moe/aux_loss (the auxiliary loss before its coefficient), moe/ce, and
moe/expert_share, the share of routed token slots each expert received since the last event, over
all MoE layers (1/n_experts each when balanced). Options: aux_loss_coef (default: the model's
router_aux_loss_coef). Checkpoints hold all weights; final/ is the model + tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques.base import (
    MODEL_WEIGHTS, Prepared, SetupContext, decay_groups, load_whole_model, save_whole_model, with_defaults,
)
from engine.models.pretrained import load_config, load_pretrained

DEFAULTS: dict[str, Any] = {"aux_loss_coef": None}


def options(spec: Any) -> dict[str, Any]:
    opts = with_defaults(spec, DEFAULTS, "moe")
    coef = opts["aux_loss_coef"]
    if coef is not None and (isinstance(coef, bool) or not isinstance(coef, (int, float)) or not 0 <= coef <= 10):
        raise UserError(f"options.aux_loss_coef: a number from 0 to 10, got {coef!r}", field="options.aux_loss_coef")
    return opts


def preflight(spec: Any) -> None:
    """Before launch (`llm-wizard train`, the wizard): the options, unknown keys refused."""
    options(spec)


def experts_of(config: Any) -> tuple[int, int]:
    """(experts per MoE layer, experts each token is routed to); (0, 0) for a dense model."""
    n = next((getattr(config, k) for k in ("num_local_experts", "num_experts", "n_routed_experts")
              if getattr(config, k, None)), 0)
    k = 1 if config.model_type == "switch_transformers" else getattr(config, "num_experts_per_tok", 0) or 0
    return int(n), int(k)


def setup(ctx: SetupContext) -> Prepared:
    from engine.data.prepare import source_blocks

    spec = ctx.spec
    opts = options(spec)
    config = load_config(spec.model.path, "model.path", spec.model)
    n_experts, top_k = experts_of(config)
    if not n_experts or not top_k:
        raise UserError(f"model.path: {spec.model.path!r} ({config.model_type}) is not a mixture-of-experts model; "
                        "use technique 'full' or 'lora' for a dense one", field="model.path")
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    ctx.progress(f"loading {spec.model.path}")
    model, tokenizer = load_pretrained(spec.model.path, "model.path", "seq2seq" if seq2seq else "causal",
                                       model=spec.model)
    limit = getattr(config, "max_position_embeddings", None)
    if limit and spec.train.seq_len > limit:
        raise UserError(f"train.seq_len {spec.train.seq_len} exceeds the model's {limit} positions",
                        field="train.seq_len")
    if seq2seq and spec.train.seq_len < 4:
        raise UserError("train.seq_len: an encoder-decoder block is cut in two; use at least 4", field="train.seq_len")
    coef = opts["aux_loss_coef"]
    if coef is None:
        coef = getattr(config, "router_aux_loss_coef", 0.01)
    model.config.output_router_logits = True
    model.config.use_cache = False
    data = source_blocks(ctx, tokenizer, model, packing=not seq2seq)  # seq2seq halves take no position ids
    if spec.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return Prepared(model=model, tokenizer=tokenizer, data=data.blocks, data_fingerprint=data.fingerprint,
                    param_groups=decay_groups(model, spec.train.weight_decay),
                    extra={"seq2seq": seq2seq, "coef": float(coef), "z_coef": float(getattr(config, "router_z_loss_coef", 0.0)),
                           "experts": n_experts, "top_k": top_k, "sums": None, "counts": None})


def loss(prep: Prepared, batch: Any) -> Any:
    import torch
    import torch.nn.functional as F

    from engine.data.pack import split_batch

    ids, mask, positions = split_batch(batch)
    x = prep.extra
    if x["seq2seq"]:
        half = ids.size(1) // 2
        labels = ids[:, half:] if mask is None else ids[:, half:].masked_fill(mask[:, half:] == 0, -100)
        out = prep.model(input_ids=ids[:, :half], labels=labels.contiguous(), output_router_logits=True)
        aux = out.encoder_aux_loss + out.decoder_aux_loss
        router = (*out.encoder_router_logits, *out.decoder_router_logits)
        extra = x["coef"] * aux + x["z_coef"] * (out.encoder_z_loss + out.decoder_z_loss)
    else:
        labels = ids[:, 1:] if mask is None else ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        out = prep.model(input_ids=ids[:, :-1], output_router_logits=True,
                         **({"position_ids": positions} if positions is not None else {}))
        aux, router = out.aux_loss, out.router_logits
        extra = x["coef"] * aux
    logits = out.logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum") \
        / (labels != -100).sum().clamp(min=1)
    if torch.is_grad_enabled():  # training only: evaluation does not count towards the expert load
        counts = sum(F.one_hot(r.reshape(-1, x["experts"]).topk(x["top_k"], dim=-1).indices, x["experts"]).sum((0, 1))
                     for r in router if r is not None).float()
        # A non-finite micro-batch makes the trainer skip its step: leave it out of the logged terms too, on
        # the device (no sync), as the logged loss does.
        ok = torch.isfinite(ce) & torch.isfinite(aux)
        zero = torch.zeros((), device=ce.device)
        both = torch.stack([torch.where(ok, ce.detach(), zero), torch.where(ok, aux.detach().float(), zero), ok.float()])
        counts = counts * ok
        x["sums"] = both if x["sums"] is None else x["sums"] + both
        x["counts"] = counts if x["counts"] is None else x["counts"] + counts
    return ce + extra


def metrics(prep: Prepared) -> dict[str, Any]:
    """CE, auxiliary loss and each expert's share of routed tokens since the last metrics event."""
    x = prep.extra
    sums, counts, x["sums"], x["counts"] = x["sums"], x["counts"], None, None
    if sums is None:
        return {}
    ce, aux, n = sums.tolist()
    if not n:  # every micro-batch since the last log was skipped
        return {}
    shares = (counts / counts.sum().clamp(min=1)).tolist()
    return {"moe/ce": ce / n, "moe/aux_loss": aux / n, "moe/expert_share": [round(s, 4) for s in shares]}


def save(prep: Prepared, folder: Path, *, final: bool = False) -> None:
    save_whole_model(prep, folder, final=final)


def load(prep: Prepared, folder: Path) -> None:
    load_whole_model(prep, folder)
    prep.extra["sums"] = prep.extra["counts"] = None


def load_inference(run: Path, folder: Path) -> tuple[Any, Any]:
    """A checkpoint or final/ as a model for `llm-wizard generate` (Switch needs the seq2seq class)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from engine.models.pretrained import load_tokenizer

    source = folder if (folder / "config.json").is_file() else run / "model"
    config = AutoConfig.from_pretrained(source)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    if source == folder:
        return auto.from_pretrained(folder), load_tokenizer(str(folder), "run")
    model = auto.from_config(config)
    load_model(model, str(folder / MODEL_WEIGHTS), strict=True)
    return model, load_tokenizer(str(source), "run")
