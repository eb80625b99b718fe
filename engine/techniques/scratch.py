"""From scratch (book 5.2.1, listing 5.1, done properly): a GPT-2 or Llama causal LM with random weights.

The tokenizer is trained on the user's text (byte-level BPE), or is the fixed byte vocabulary, or
char-level as in the book. The data is read through the one data path every technique uses
(engine/data/prepare.py): text files are tokenized once into a cached token file; a table (JSONL, CSV,
Parquet...), a Hub dataset or a Slack export is read in its layout (data.format and the column settings),
its bad rows named file:line, conversations rendered through the chat template (plain unless data.template
names one), and the tokenizer trained on the examples as they are rendered, not on the file's bytes.
Attention is PyTorch's fused SDPA (the listing's per-head loop, with its sqrt(d) scaling bug, is for teaching
only). The module shape (setup / loss / save / load) is described in engine/techniques/base.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques.base import (
    Prepared, SetupContext, causal_lm_loss, check_options, corpus_files, decay_groups, load_whole_model,
    save_whole_model, text_blocks,
)


def preflight(spec: Any) -> None:
    """What scratch does not read is refused before launch: any [options] key, and a pretrained model.path."""
    check_options(spec.options, [], "scratch", " (the model's shape is [model] arch, size, layers, width, heads; "
                  "its tokenizer is [tokenizer])")
    if spec.model.path:
        raise UserError("model.path: scratch builds a new model from model.arch and model.size; a pretrained model "
                        "is fine-tuned with technique = \"full\" or \"lora\"", field="model.path")


def check_source(source: Any) -> None:
    """Preference pairs are for dpo and orpo: scratch learns documents, instructions and conversations."""
    if source.kind != "text" and source.layout().format == "preference":
        raise UserError("data.format: preference pairs train with technique = \"dpo\" or \"orpo\"; scratch learns "
                        "text, instructions or conversations", field="data.format")


def setup(ctx: SetupContext) -> Prepared:
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    from engine.data.pack import packing_isolates
    from engine.data.prepare import source_blocks
    from engine.data.sources import DataSource
    from engine.models.architectures import build_config, shape_for

    spec = ctx.spec
    preflight(spec)
    source = DataSource.from_spec(spec.data)
    prepared = None
    if source.kind == "text":  # text files: one stream cut into blocks
        files = corpus_files(ctx)
        tokenizer = tokenizer_for(spec, files, progress=ctx.progress, should_stop=ctx.should_stop)
        data, fingerprint = text_blocks(ctx, files, tokenizer)
    else:  # rows in their layout, as every technique reads them (engine/data/prepare.py)
        check_source(source)
        tokenizer = tokenizer_for(spec, source.files(), source, progress=ctx.progress, should_stop=ctx.should_stop)
        prepared = source_blocks(ctx, tokenizer)  # the chat template applied: its new tokens are in len(tokenizer)
        data, fingerprint = prepared.blocks, prepared.fingerprint

    m = spec.model
    shape = shape_for(m.size, layers=m.layers or None, width=m.width or None, heads=m.heads or None)
    config = build_config(m.arch, shape, vocab_size=len(tokenizer), max_seq_len=spec.train.seq_len)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, m.dropout)
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)  # the same seed gives the same initial weights
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if prepared is not None and source.packing and source.masks and not packing_isolates(model):
        # as source_blocks decides for a pretrained model; the token cache makes this a re-pack
        prepared = source_blocks(ctx, tokenizer, packing=False)
        note = "this model does not keep packed examples apart by their position ids: one example a sequence"
        ctx.progress(note)
        prepared.blocks.report = replace(prepared.report, warnings=(*prepared.report.warnings, note))
        data = prepared.blocks
    if spec.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return Prepared(model=model, tokenizer=tokenizer, data=data,
                    param_groups=decay_groups(model, spec.train.weight_decay), data_fingerprint=fingerprint)


def tokenizer_for(spec: Any, files: list[Path], source: Any = None, *, progress: Any = lambda message: None,
                  should_stop: Any = None) -> Any:
    """The run's tokenizer: tokenizer.path's, else one trained (and cached) on the text `files`, or on a table
    `source`'s examples as rendered. `llm-wizard data` opens the same one."""
    from transformers import AutoTokenizer

    from engine.data.tokenizer_train import train_tokenizer

    t = spec.tokenizer
    if t.path:
        return AutoTokenizer.from_pretrained(t.path)
    if source is None:
        progress(f"training a {t.kind} tokenizer on {len(files)} file(s)")
        return train_tokenizer(files, t.kind, t.vocab_size)
    from engine.data.example_file import source_fingerprint
    from engine.data.prepare import rendered_texts

    progress(f"training a {t.kind} tokenizer on the examples of {source.path}")
    return train_tokenizer(files, t.kind, t.vocab_size, should_stop=should_stop,
                           texts=lambda: rendered_texts(source, should_stop),
                           corpus_key="examples:" + source_fingerprint(source, should_stop))


def loss(prep: Prepared, batch: Any) -> Any:
    if batch.dim() == 2:  # a text stream's blocks
        return causal_lm_loss(prep.model, batch)
    from engine.data.pack import lm_loss

    return lm_loss(prep.model, batch)  # examples: (B, 3, T+1) ids + loss mask + position ids


def save(prep: Prepared, folder: Path, *, final: bool = False) -> None:
    save_whole_model(prep, folder, final=final)


def load(prep: Prepared, folder: Path) -> None:
    load_whole_model(prep, folder)
