"""From scratch (book 5.2.1, listing 5.1, done properly): a GPT-2 or Llama causal LM with random weights.

The tokenizer is trained on the user's text (byte-level BPE), or is the fixed byte vocabulary, or
char-level as in the book; the text is tokenized once into a cached token file. Attention is
PyTorch's fused SDPA (the listing's per-head loop, with its sqrt(d) scaling bug, is for teaching only).
The module shape (setup / loss / save / load) is described in engine/techniques/base.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.techniques.base import (
    Prepared, SetupContext, causal_lm_loss, corpus_files, decay_groups, load_whole_model, save_whole_model, text_blocks,
)


def setup(ctx: SetupContext) -> Prepared:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models.architectures import build_config, shape_for
    from engine.data.tokenizer_train import train_tokenizer

    spec = ctx.spec
    files = corpus_files(ctx)
    if spec.tokenizer.path:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer.path)
    else:
        ctx.progress(f"training a {spec.tokenizer.kind} tokenizer on {len(files)} file(s)")
        tokenizer = train_tokenizer(files, spec.tokenizer.kind, spec.tokenizer.vocab_size)
    data, fingerprint = text_blocks(ctx, files, tokenizer)

    m = spec.model
    shape = shape_for(m.size, layers=m.layers or None, width=m.width or None, heads=m.heads or None)
    config = build_config(m.arch, shape, vocab_size=len(tokenizer), max_seq_len=spec.train.seq_len)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, m.dropout)
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)  # the same seed gives the same initial weights
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if spec.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return Prepared(model=model, tokenizer=tokenizer, data=data,
                    param_groups=decay_groups(model, spec.train.weight_decay), data_fingerprint=fingerprint)


def loss(prep: Prepared, batch: Any) -> Any:
    return causal_lm_loss(prep.model, batch)


def save(prep: Prepared, folder: Path, *, final: bool = False) -> None:
    save_whole_model(prep, folder, final=final)


def load(prep: Prepared, folder: Path) -> None:
    load_whole_model(prep, folder)
