"""Tiny "pretrained" models for the prompt-tuning, distill and moe tests: built from configs with random
weights, saved with a BPE tokenizer trained on the test corpus (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from run_helpers import make_corpus


def tokenizer_for(corpus: Path, vocab_size: int = 320) -> Any:
    from engine.data.tokenizer_train import train_tokenizer

    return train_tokenizer([corpus], "bpe", vocab_size)


def save_model(config: Any, tokenizer: Any, folder: Path, *, seed: int = 0, auto: str = "causal") -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    cls = AutoModelForSeq2SeqLM if auto == "seq2seq" else AutoModelForCausalLM
    model = cls.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def gpt2(tokenizer: Any, folder: Path, *, layers: int = 1, width: int = 32, seed: int = 0, init: float = 0.02) -> Path:
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=width, n_layer=layers, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=init)
    return save_model(config, tokenizer, folder, seed=seed)


def mixtral(tokenizer: Any, folder: Path, *, experts: int = 4) -> Path:
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=experts,
                           num_experts_per_tok=2, max_position_embeddings=128, bos_token_id=tokenizer.eos_token_id,
                           eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return save_model(config, tokenizer, folder)


def qwen2_moe(tokenizer: Any, folder: Path, *, experts: int = 4) -> Path:
    from transformers import Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                            moe_intermediate_size=32, shared_expert_intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, num_experts=experts, num_experts_per_tok=2,
                            max_position_embeddings=128, bos_token_id=tokenizer.eos_token_id,
                            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return save_model(config, tokenizer, folder)


def switch(tokenizer: Any, folder: Path, *, experts: int = 4) -> Path:
    from transformers import SwitchTransformersConfig

    config = SwitchTransformersConfig(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                      num_decoder_layers=2, num_heads=2, num_experts=experts, expert_capacity=64,
                                      num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
                                      pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                      eos_token_id=tokenizer.eos_token_id,
                                      decoder_start_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return save_model(config, tokenizer, folder, auto="seq2seq")


def corpus_and_tokenizer(folder: Path, lines: int = 1500) -> tuple[Path, Any]:
    corpus = make_corpus(folder, lines)
    return corpus, tokenizer_for(corpus)


def tensors(folder: Path, name: str = "model.safetensors") -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def pretrain(folder: Path, corpus: Path, steps: int = 60, seq_len: int = 32, lr: float = 3e-3) -> Path:
    """A few AdamW steps of next-token training on `corpus`, saved back: a weak but real language model
    (a random one gives a near-uniform output that no prompt or teacher can move)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor(tokenizer(corpus.read_text())["input_ids"])
    n = (len(ids) - 1) // seq_len
    blocks = ids[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (8,), generator=gen)]
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def shifted_corpus(folder: Path, lines: int = 800) -> Path:
    """Sentences from five of the corpus words only: a shift a prompt or a fine-tune can learn."""
    import random

    rng = random.Random(1)
    words = "the cat sat on mat".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + "." for _ in range(lines))
    path = folder / "shifted.txt"
    path.write_text(text + "\n")
    return path
