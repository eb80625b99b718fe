"""What the preference techniques (dpo.py, orpo.py) share: the model they tune, the answers' log-probabilities
of a pair batch, the live metrics, saving and loading. Not a technique itself (the spec does not name it).

`options.finetuning` says what trains: "lora" (the default: an adapter on a frozen base, LoRA's options
apply: lora_rank, lora_alpha, lora_dropout, lora_targets, merge), "qlora" (the same on a 4-bit NF4 base),
or "full" (every weight). Checkpoints and final/ are then LoRA's (the adapter alone) or the whole model's.

The data are engine/data/preference.py's pair batches (B, 2, 3, L): one forward over the 2B sequences, the
B chosen first, as TRL does. A sequence's log-probability is the sum over its answer tokens of the
log-softmax of the next-token logits (computed as a cross-entropy per token: the same float32 log-softmax,
the memory the estimator counts for any causal-LM loss).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.models.pretrained import load_config, unwrap
from engine.techniques import lora
from engine.techniques.base import Prepared, SetupContext, check_options, decay_groups, load_whole_model, save_whole_model

FINETUNING = ("lora", "qlora", "full")
METRIC_NAMES = ("pref/reward_chosen", "pref/reward_rejected", "pref/accuracy")


def split_options(spec: Any, technique: str, defaults: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(this technique's options with defaults, a spec view for the finetuning's own code: technique = the
    finetuning, options = LoRA's only). An unknown option, or a LoRA option on a full fine-tune, is refused."""
    own = {"finetuning": "lora", **defaults}
    check_options(spec.options, [*own, *lora.DEFAULTS], technique)
    opts = {**own, **{k: v for k, v in spec.options.items() if k in own}}
    if opts["finetuning"] not in FINETUNING:
        raise UserError(f"options.finetuning: {opts['finetuning']!r} is not one of {', '.join(FINETUNING)}",
                        field="options.finetuning")
    adapter = {k: v for k, v in spec.options.items() if k in lora.DEFAULTS}
    if adapter and opts["finetuning"] == "full":
        key = next(iter(adapter))
        raise UserError(f"options.{key}: a LoRA option, but options.finetuning = \"full\" trains every weight; "
                        "set finetuning = \"lora\" or leave it out", field=f"options.{key}")
    beta = opts.get("beta")
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 100):
        raise UserError(f"options.beta: a number above 0 (0.1 is usual), got {beta!r}", field="options.beta")
    view = dataclasses.replace(spec, technique=opts["finetuning"], options=adapter)
    if opts["finetuning"] != "full":
        lora.options(view, technique)
    return opts, view


def preflight(spec: Any, technique: str, defaults: dict[str, Any]) -> None:
    """Before launch: the options, the model's config, and 4-bit support when the base is quantized."""
    opts, view = split_options(spec, technique, defaults)
    load_config(spec.model.path, "model.path", spec.model)
    if opts["finetuning"] == "qlora":
        from engine.techniques import qlora

        qlora.preflight(view)


def setup(ctx: SetupContext, technique: str, opts: dict[str, Any], view: Any) -> Prepared:
    """The model to tune (LoRA, QLoRA or every weight) and the pair batches; extra["finetuning"] says which."""
    from engine.data.prepare import source_blocks

    spec, finetuning = ctx.spec, opts["finetuning"]
    ctx.progress(f"loading {spec.model.path}" + (" in 4-bit NF4" if finetuning == "qlora" else ""))
    if finetuning == "qlora":
        from engine.techniques import qlora

        base, tokenizer = qlora.load_for_training(view)
    else:
        base, tokenizer = lora.load_base(view, dtype=lora.base_dtype(view) if finetuning == "lora" else None)
    data = source_blocks(ctx, tokenizer, base, pairs=True)
    if spec.train.gradient_checkpointing and finetuning != "qlora":  # qlora's base has it from kbit preparation
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    extra: dict[str, Any] = {"finetuning": finetuning, "run": ctx.run, "sums": None}
    if finetuning == "full":
        model = base
        groups = decay_groups(model, spec.train.weight_decay)
    else:
        new = [tokenizer.convert_tokens_to_ids(t) for t in data.added_tokens]
        model = lora.wrap(base, view, technique, new_tokens=new)
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": trainable, "weight_decay": spec.train.weight_decay}]
        extra |= {"base_path": spec.model.path, "merge": lora.options(view, technique)["merge"],
                  "merge_dtype": lora.base_dtype(view)}
    model.train()
    return Prepared(model=model, tokenizer=tokenizer, data=data.blocks, data_fingerprint=data.fingerprint,
                    param_groups=groups, extra=extra)


def note(prep: Prepared, text: str) -> None:
    """A line for the run's "model ready" event (the data report's warnings travel in it)."""
    report = getattr(prep.data, "report", None)
    if report is not None:
        prep.data.report = dataclasses.replace(report, warnings=(*report.warnings, text))


def token_terms(model: Any, ids: Any, keep: Any) -> Any:
    """(2B, L - 1) float32 negative log-likelihood of each next token where `keep` (shifted) holds, else 0.
    No attention mask: the rows are right-padded, and a causal model's real tokens never see the padding."""
    import torch.nn.functional as F

    logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    targets = ids[:, 1:].masked_fill(~keep[:, 1:], -100)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100,
                          reduction="none")
    return nll.view(targets.shape)


def answer_logps(model: Any, ids: Any, answer: Any) -> Any:
    """(2B,) the summed log-probability of each row's answer tokens."""
    return -token_terms(model, ids, answer).sum(-1)


def record(prep: Prepared, chosen: Any, rejected: Any, *more: Any) -> None:
    """Add a training micro-batch's rewards (and the technique's further terms, batch means) to the metric sums,
    on the device (no sync). A non-finite micro-batch, which the trainer skips, is left out of them too."""
    import torch

    if not torch.is_grad_enabled():  # evaluation: not part of the training metrics
        return
    pairs = chosen.numel()
    row = torch.stack([chosen.detach().float().sum(), rejected.detach().float().sum(),
                       (chosen > rejected).float().sum(), *(m.detach().float() * pairs for m in more),
                       torch.tensor(float(pairs), device=chosen.device)])
    row = torch.where(torch.isfinite(row).all(), row, torch.zeros_like(row))
    prep.extra["sums"] = row if prep.extra["sums"] is None else prep.extra["sums"] + row


def metrics(prep: Prepared, more: tuple[str, ...] = ()) -> dict[str, float]:
    """Means over the pairs trained since the last metrics event (one device sync at the logging interval)."""
    sums, prep.extra["sums"] = prep.extra["sums"], None
    if sums is None:
        return {}
    *values, n = sums.tolist()
    if not n:
        return {}
    chosen, rejected, right, *rest = (v / n for v in values)
    out = {"pref/reward_chosen": chosen, "pref/reward_rejected": rejected, "pref/margin": chosen - rejected,
           "pref/accuracy": right}
    return out | dict(zip(more, rest))


def save(prep: Prepared, folder: Path, *, final: bool = False) -> dict[str, Any] | None:
    if prep.extra["finetuning"] == "full":
        save_whole_model(prep, folder, final=final)
        return None
    return lora.save(prep, folder, final=final)


def load(prep: Prepared, folder: Path) -> None:
    if prep.extra["finetuning"] == "full":
        load_whole_model(prep, folder)
    else:
        lora.load(prep, folder)
    prep.extra["sums"] = None  # after a rollback, the metrics restart from the restored step


def load_inference(run: Path, folder: Path) -> tuple[Any, Any]:
    """A checkpoint or final/ for `llm-wizard generate`: the adapter on its base, or the whole model."""
    from engine import spec as spec_mod
    from engine.runfolder import folder as runfolder

    finetuning = spec_mod.load(Path(run) / runfolder.SPEC).options.get("finetuning", "lora")
    if finetuning == "qlora":
        from engine.techniques import qlora

        return qlora.load_inference(run, folder)
    if finetuning == "lora":
        return lora.load_inference(run, folder)
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.models.pretrained import load_tokenizer
    from engine.techniques.base import MODEL_WEIGHTS

    if (folder / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(folder), load_tokenizer(str(folder), "run")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(Path(run) / "model"))
    load_model(model, str(folder / MODEL_WEIGHTS), strict=True)
    return model, load_tokenizer(str(Path(run) / "model"), "run")

