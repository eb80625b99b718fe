"""MFU pieces: the peak table keyed by NVML names, and FLOPs per token against a hand count."""

from __future__ import annotations

import pytest

from engine.machine import flops
from engine.machine.fake_nvml import fixture


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5),  # SXM as NVML names it
    ("NVIDIA H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.5),
    ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA A10G", 125.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA L40", 181.05),
    ("NVIDIA GeForce RTX 4090", 165.2),
    ("NVIDIA GeForce RTX 3090", 71.0),
    ("Tesla V100-SXM2-16GB", 125.0),
    ("Tesla V100-PCIE-32GB", 112.0),
    ("Tesla T4", 65.0),
])
def test_peak_by_nvml_name(name: str, tflops: float) -> None:
    assert flops.peak_flops(name) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name", [None, "", "NVIDIA GeForce GTX 1080", "AMD Instinct MI300X", "NVIDIA L40G"])
def test_unknown_gpu_or_none_has_no_peak(name: str | None) -> None:
    assert flops.peak_flops(name) is None
    assert flops.mfu(1_000_000, 5000.0, flops.peak_flops(name)) is None


def test_every_table_row_names_its_source() -> None:
    for pattern, tflops, source in flops.PEAK_BF16_TFLOPS:
        assert tflops > 0 and ("sheet" in source or "whitepaper" in source), pattern


def test_fake_nvml_boards_are_in_the_table() -> None:
    """The fixtures the wizard is tested with (L4, H100) resolve through their NVML names."""
    for machine in ("2xL4", "8xH100"):
        nvml = fixture(machine)
        nvml.nvmlInit()
        names = [nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
        assert names and all(flops.peak_flops(n) for n in names), names


def test_mfu_arithmetic() -> None:
    # 1e9 FLOPs a token at 1e5 tokens/s on a 1e15 FLOP/s GPU: 10%
    assert flops.mfu(10**9, 1e5, 1e15) == pytest.approx(0.1)
    assert flops.mfu(10**9, 0.0, 1e15) is None


def _gpt2(layers: int = 2, width: int = 64, vocab: int = 100, positions: int = 32) -> object:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=width, n_layer=layers,
                                      n_head=2))


def test_flops_per_token_gpt2_by_hand() -> None:
    layers, width, vocab, seq = 2, 64, 100, 32
    model = _gpt2(layers, width, vocab, seq)
    # per block: c_attn d*3d+3d, c_proj d*d+d, c_fc d*4d+4d, mlp c_proj 4d*d+d, two LayerNorms 4d
    block = (3 * width * width + 3 * width) + (width * width + width) + (4 * width * width + 4 * width) \
        + (4 * width * width + width) + 4 * width
    matmul = layers * block + 2 * width + vocab * width  # final LayerNorm, tied head (the token embedding)
    assert flops.flops_per_token(model, seq) == 6 * matmul + 12 * layers * seq * width
    # position embeddings are lookups: not counted; the tied head is counted once
    total = sum(p.numel() for p in model.parameters())
    assert total - seq * width == matmul


def test_frozen_weights_cost_four_not_six() -> None:
    model = _gpt2()
    trained = flops.flops_per_token(model, 32)
    for p in model.transformer.h.parameters():
        p.requires_grad_(False)
    n_blocks = sum(p.numel() for p in model.transformer.h.parameters())
    assert flops.flops_per_token(model, 32) == trained - 2 * n_blocks


def test_llama_untied_head_counted_embedding_not() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters()) - 100 * 64  # all but the input embedding
    assert flops.flops_per_token(model, 16) == 6 * n + 12 * 2 * 16 * 64


def test_cpu_reports_unknown() -> None:
    import torch

    if torch.cuda.is_available():  # on a GPU machine the peak comes from the table instead
        assert flops.device_peak() == flops.peak_flops(torch.cuda.get_device_name())
    else:
        assert flops.device_peak() is None
