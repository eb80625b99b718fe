"""Runs to export: a tiny Llama and a tiny Qwen2 trained by the product on conversations, with LoRA or all
weights, and transformers' greedy tokens to hold a GGUF against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import spec
from chat_helpers import many, qwen2_model, train_bpe, write_jsonl


def llama_model(folder: Path, tokenizer: Any, *, width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Llama with grouped-query attention (2 heads, 1 key/value head) and an untied head."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # confident predictions: greedy tokens that 16-bit rounding does not flip
        model.get_output_embeddings().weight.mul_(4.0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def trained_run(root: Path, arch: str, technique: str, *, steps: int = 4, template: str = "auto",
                lr: float = 3e-3) -> Path:
    """A finished run of `technique` on a tiny `arch` ("llama" or "qwen2") model over chat data. `template`
    "auto": the model's own ChatML template (Qwen's); a named one: a base tokenizer without one is given it
    (its special tokens added and trained)."""
    from engine.run import job
    from engine.run.trainer import Trainer

    folder = root / f"{arch}-{technique}"
    tok = train_bpe(folder / "tok") if template == "auto" else \
        train_bpe(folder / "tok", special=("<|endoftext|>",), template=None)
    model = (llama_model if arch == "llama" else qwen2_model)(folder / "model", tok)
    data = write_jsonl(folder / "chat.jsonl", [{"messages": c} for c in many(48)])
    s = spec.from_dict({
        "technique": technique, "name": f"{arch}-{technique}", "model": {"path": str(model)},
        "data": {"path": str(data), "val_fraction": 0.1, "template": template},
        "train": {"seq_len": 128, "batch_size": 4, "max_steps": steps, "lr": lr, "threads": 1,
                  "schedule": "constant"},
        "eval": {"every": steps}, "checkpoint": {"every": steps, "keep": 2}, "log": {"every": 1},
        **({"options": {"lora_rank": 4, "lora_targets": "all-linear"}} if technique in ("lora", "qlora") else {})})
    run = job.create(s, folder / "runs")
    assert Trainer(run, s).run_job() == 0
    return run


def greedy_ids(model_dir: Path, prompt_ids: list[int], n: int = 16) -> list[int]:
    """transformers' greedy continuation of `prompt_ids` by the model in `model_dir` (no early stop)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()
