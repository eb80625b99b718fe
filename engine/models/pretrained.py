"""Loading a pretrained model and its tokenizer for the fine-tuning techniques.

A Hub id is read from the Hub cache (HF_HUB_OFFLINE: a model not cached is a clear error, not a download
attempt that hangs); a local folder is read as is. Weights load in fp32: the trainer's precision setting
decides what runs in 16 bits. `model` is the spec's ModelSpec when `path` is model.path: its opt-ins
(engine/models/trust.py) let a model's own code run when pinned, and pickle-only weights load as plain tensors;
without it (a teacher) neither is allowed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.models.trust import check_remote_code, weight_options

KINDS = ("causal", "seq2seq", "classification")


def load_config(path: str, field: str, model: Any = None) -> Any:
    from transformers import AutoConfig

    if not path:
        raise UserError(f"{field}: give a pretrained model (a Hub id or a local folder)", field=field)
    source, trust = check_remote_code(path, field, model)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        where = "folder" if Path(path).expanduser().exists() else "Hub id (not in the local cache?)"
        raise UserError(f"{field}: cannot load the {where} {path!r}: {str(e).splitlines()[0]}", field=field) from None


def load_tokenizer(path: str, field: str, model: Any = None) -> Any:
    from transformers import AutoTokenizer

    source, trust = check_remote_code(path, field, model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise UserError(f"{field}: no usable tokenizer in {path!r}: {str(e).splitlines()[0]}", field=field) from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"{field}: the tokenizer of {path!r} has no end-of-text token", field=field)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # the book's listings do the same
    return tokenizer


def load_pretrained(path: str, field: str, kind: str = "causal", *, config_updates: dict[str, Any] | None = None,
                    model: Any = None, **model_kwargs: Any) -> tuple[Any, Any]:
    """(model in fp32 on the CPU, tokenizer). `kind` picks the Auto class; `config_updates` are set on the
    config first (a classifier's labels); `model_kwargs` go to from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = load_config(path, field, model)
    for key, value in (config_updates or {}).items():
        setattr(config, key, value)
    tokenizer = load_tokenizer(path, field, model)
    auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
            "classification": AutoModelForSequenceClassification}[kind]
    return load_weights(auto, path, field, config, model, f"a {kind} model", **model_kwargs), tokenizer


def load_weights(auto: Any, path: str, field: str, config: Any, model: Any = None, what: str = "a causal LM",
                 **kwargs: Any) -> Any:
    """`auto.from_pretrained` with the spec's opt-ins checked (remote code, pickle weights; RELIABILITY M3, S2);
    kwargs cannot turn weights_only off."""
    import torch

    source, trust = check_remote_code(path, field, model)
    weights = weight_options(path, field, bool(model is not None and getattr(model, "path", None) == path
                                               and model.allow_pickle_weights))
    try:
        return auto.from_pretrained(source, config=config, trust_remote_code=trust,
                                    **{"dtype": torch.float32, **kwargs, **weights})
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0]
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in reason:
            # torch's text suggests loading without weights_only; never done here (RELIABILITY S1, S2)
            reason = ("its pickle weights hold more than tensors, which weights_only=True refuses; they are not "
                      "read any other way: use safetensors weights")
        raise UserError(f"{field}: {path!r} cannot be loaded as {what}: {reason}", field=field) from None


def unwrap(model: Any) -> Any:
    """The plain model inside torch.compile's and DDP's wrappers (the weights are the inner one's)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
