"""Full fine-tune (book 5.2.2, listing 5.2, done right): every weight of a pretrained causal LM trains.

The listing fine-tunes GPT-2 with `DataCollatorForLanguageModeling(mlm=True)`: masked-LM targets for a
model that predicts the next token. Here the loss is plain next-token cross-entropy (what `mlm=False`
gives), on the user's text tokenized with the model's own tokenizer (no resized vocabulary, no added
special tokens, so the pretrained embeddings keep their meaning). The weights load in fp32 (they are
the master copy the optimizer updates; train.precision decides what runs in 16 bits). The learning
rate defaults lower than scratch's (2e-5, engine/spec.py TECHNIQUE_DEFAULTS): a large step wipes out
what pretraining learned.

Checkpoints hold the whole model's weights (safetensors); final/ is a complete model + tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.techniques import lora
from engine.techniques.base import (
    Prepared, SetupContext, check_options, decay_groups, load_whole_model, save_whole_model,
)
from engine.models.pretrained import load_config



def preflight(spec: Any) -> None:
    """Before launch (and again in setup): the full fine-tune has no options, so any given is a mistake;
    the model must be found (its config is read, no weights)."""
    check_options(spec.options, [], "full", " (LoRA's need technique = \"lora\")")
    load_config(spec.model.path, "model.path", spec.model)


def setup(ctx: SetupContext) -> Prepared:
    from engine.data.prepare import source_blocks

    spec = ctx.spec
    preflight(spec)
    ctx.progress(f"loading {spec.model.path}")
    model, tokenizer = lora.load_base(spec)  # fp32, remote code off, seq_len and tokenizer checked
    data = source_blocks(ctx, tokenizer, model)  # any data source, through its chat template; replies trained
    if spec.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # from_pretrained returns eval mode: the model's own dropout applies while training
    return Prepared(model=model, tokenizer=tokenizer, data=data.blocks,
                    param_groups=decay_groups(model, spec.train.weight_decay), data_fingerprint=data.fingerprint)


def loss(prep: Prepared, batch: Any) -> Any:
    from engine.data.pack import lm_loss

    return lm_loss(prep.model, batch)  # (B, T+1) ids, or (B, 3, T+1) ids + loss mask + position ids


def save(prep: Prepared, folder: Path, *, final: bool = False) -> None:
    save_whole_model(prep, folder, final=final)


def load(prep: Prepared, folder: Path) -> None:
    load_whole_model(prep, folder)
