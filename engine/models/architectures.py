"""Scratch architectures: GPT-2 and Llama shapes by size name, as transformers configs.

Shared by the estimator (parameter counts on the meta device) and the scratch technique (random
init). Shapes follow the published models of each size (GPT-2 small/medium, TinyLlama 1.1B,
Llama 2 7B) so that estimates can be compared with numbers people know.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from engine import vocabulary

ARCHS = vocabulary.names(vocabulary.ARCHS)


@dataclass(frozen=True)
class Shape:
    layers: int
    width: int
    heads: int
    kv_heads: int | None = None  # Llama grouped-query attention; None = same as heads
    intermediate: int | None = None  # Llama MLP width; None = Llama's 8/3 rule (GPT-2: 4x)

    def mlp_width(self, arch: str) -> int:
        if arch == "gpt2":  # GPT-2 is always 4x; the table's widths are Llama's
            return 4 * self.width
        if self.intermediate:
            return self.intermediate
        # Llama: 2/3 of 4x, rounded up to a multiple of 256 (as in the reference implementation)
        return 256 * ((int(8 * self.width / 3) + 255) // 256)


SIZES: dict[str, Shape] = {
    "tiny": Shape(layers=2, width=64, heads=2),
    "10M": Shape(layers=6, width=256, heads=4),
    "125M": Shape(layers=12, width=768, heads=12),
    "350M": Shape(layers=24, width=1024, heads=16),
    "1B": Shape(layers=22, width=2048, heads=32, kv_heads=4, intermediate=5632),
    "7B": Shape(layers=32, width=4096, heads=32, intermediate=11008),
}
assert tuple(SIZES) == vocabulary.SIZES, "a size is named in engine/vocabulary.py and given its shape here"


def shape_for(size: str, **overrides: int | None) -> Shape:
    """The named size, with explicit layer/width/head flags overriding it."""
    from engine.errors import UserError

    if size not in SIZES:
        raise UserError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}", field="size")
    shape = replace(SIZES[size], **{k: v for k, v in overrides.items() if v is not None})
    for name in ("layers", "width", "heads"):
        if getattr(shape, name) <= 0:
            raise UserError(f"{name} must be a positive number, got {getattr(shape, name)}", field=name)
    if shape.width % shape.heads:
        raise UserError(f"width {shape.width} is not divisible by heads {shape.heads}", field="heads")
    return shape


def build_config(arch: str, shape: Shape, *, vocab_size: int, max_seq_len: int) -> Any:
    """A transformers config for a causal LM of this shape, with SDPA attention."""
    from engine.errors import UserError

    if arch == "gpt2":
        from transformers import GPT2Config

        cfg = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_seq_len,
            n_embd=shape.width,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.mlp_width(arch),
            bos_token_id=0,
            eos_token_id=0,
            # GPT-2's tanh GELU as one fused kernel: "gelu_new" computes the same formula in ~8 Python-level
            # ops, which cost the scratch model a quarter of its CPU step time (bench/throughput.py)
            activation_function="gelu_pytorch_tanh",
        )
    elif arch == "llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=shape.width,
            intermediate_size=shape.mlp_width(arch),
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads or shape.heads,
            max_position_embeddings=max_seq_len,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
    else:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}", field="arch")
    cfg._attn_implementation = "sdpa"
    return cfg
