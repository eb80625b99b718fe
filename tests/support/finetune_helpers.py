"""Tiny "pretrained" models for the full, LoRA and QLoRA tests: built from configs with random weights
and saved with a BPE tokenizer trained on the test's corpus (no network), and specs that fine-tune them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import spec
from run_helpers import make_corpus


def corpus_and_tokenizer(folder: Path, lines: int = 1500, vocab_size: int = 320) -> tuple[Path, Any]:
    from engine.data.tokenizer_train import train_tokenizer

    corpus = make_corpus(folder, lines)
    return corpus, train_tokenizer([corpus], "bpe", vocab_size)


def base_model(arch: str, tokenizer: Any, folder: Path, *, width: int = 64, layers: int = 2, seed: int = 0,
               head_scale: float = 5.0) -> Path:
    """A GPT-2 or Llama causal LM with random weights and the tokenizer, saved as safetensors in `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    eos = tokenizer.eos_token_id
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=width, n_layer=layers, n_head=2,
                            bos_token_id=eos, eos_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                             num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                             max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos,
                             tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # an output head wide enough that a frozen one still allows confident predictions
        model.get_output_embeddings().weight.mul_(head_scale)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def finetune_spec(technique: str, model: Path, corpus: Path, **sections: dict[str, Any]) -> spec.RunSpec:
    data: dict[str, Any] = {
        "technique": technique, "name": technique, "model": {"path": str(model)},
        "data": {"path": str(corpus), "val_fraction": 0.05},
        "train": {"seq_len": 32, "batch_size": 8, "max_steps": 30, "warmup_steps": 2, "threads": 1,
                  "schedule": "constant"},
        "eval": {"every": 0}, "checkpoint": {"every": 10, "keep": 5}, "log": {"every": 1},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return spec.from_dict(data)


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))
