"""Loading a pretrained model and its tokenizer for prompt-tuning, distill and moe (remote code never runs).

A Hub id is read from the Hub cache (HF_HUB_OFFLINE: a model not cached is a clear error, not a download
attempt that hangs); a local folder is read as is. Weights load in fp32: the trainer's precision setting
decides what runs in 16 bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError

KINDS = ("causal", "seq2seq", "classification")


def load_config(path: str, field: str) -> Any:
    from transformers import AutoConfig

    if not path:
        raise UserError(f"{field}: give a pretrained model (a Hub id or a local folder)", field=field)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        where = "folder" if Path(path).expanduser().exists() else "Hub id (not in the local cache?)"
        raise UserError(f"{field}: cannot load the {where} {path!r}: {str(e).splitlines()[0]}", field=field) from None


def load_tokenizer(path: str, field: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{field}: no usable tokenizer in {path!r}: {str(e).splitlines()[0]}", field=field) from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"{field}: the tokenizer of {path!r} has no end-of-text token", field=field)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # the book's listings do the same
    return tokenizer


def load_pretrained(path: str, field: str, kind: str = "causal", *, config_updates: dict[str, Any] | None = None,
                    **model_kwargs: Any) -> tuple[Any, Any]:
    """(model in fp32 on the CPU, tokenizer). `kind` picks the Auto class; `config_updates` are set on the
    config first (a classifier's labels); `model_kwargs` go to from_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = load_config(path, field)
    for key, value in (config_updates or {}).items():
        setattr(config, key, value)
    tokenizer = load_tokenizer(path, field)
    auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
            "classification": AutoModelForSequenceClassification}[kind]
    try:
        model = auto.from_pretrained(path, config=config, trust_remote_code=False, **{"dtype": torch.float32, **model_kwargs})
    except (OSError, ValueError) as e:
        raise UserError(f"{field}: {path!r} cannot be loaded as a {kind} model: {str(e).splitlines()[0]}",
                        field=field) from None
    return model, tokenizer


def unwrap(model: Any) -> Any:
    """The plain model inside torch.compile's and DDP's wrappers (the weights are the inner one's)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
