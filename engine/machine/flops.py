"""Model FLOPs utilisation (MFU): the training FLOPs a model needs per token against the GPU's peak.

FLOPs per token follow PaLM (appendix B) and nanochat: 6 per weight that is trained (2 forward, 4
backward), plus 12 * layers * seq_len * width for the attention scores (QK^T and AV, forward and
backward). Weights that only look tokens up (token and position embeddings) do no multiply-adds and are
not counted; a head tied to the token embedding is a matmul and is counted once. A frozen weight (LoRA's
base, a distillation teacher is not in the model) costs 4 per token: its input gradient is still
computed, its weight gradient is not. Recomputation under gradient checkpointing is not counted (that
would be hardware FLOPs utilisation, not MFU).

The peak is the data sheet's dense BF16 Tensor Core number for the GPU named by NVML (sparsity figures
halved where a sheet quotes only those). MFU is reported against that peak whatever train.precision is
(the convention nanochat and PaLM follow). No GPU, or a GPU not in the table: None, shown as unknown;
never a guess.
"""

from __future__ import annotations

import re
from typing import Any

# (pattern on the NVML name, dense BF16 TFLOPS, source). First match wins: specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    # NVIDIA H200 data sheet (nvidia.com/en-us/data-center/h200): BF16 Tensor Core 1,979 TFLOPS with
    # sparsity (SXM), 1,671 (NVL); dense is half.
    (r"H200 NVL", 835.5, "H200 data sheet, H200 NVL: 1,671 sparse / 2"),
    (r"H200", 989.5, "H200 data sheet, H200 SXM: 1,979 sparse / 2"),
    # NVIDIA H100 data sheet (nvidia.com/en-us/data-center/h100): BF16 1,979 (SXM), 1,671 (NVL),
    # 1,513 (PCIe) TFLOPS with sparsity.
    (r"H100 NVL", 835.5, "H100 data sheet, H100 NVL: 1,671 sparse / 2"),
    (r"H100 PCIe", 756.5, "H100 data sheet, H100 PCIe: 1,513 sparse / 2"),
    (r"H100", 989.5, "H100 data sheet, H100 SXM (NVML: 'H100 80GB HBM3'): 1,979 sparse / 2"),
    # NVIDIA A100 data sheet (nvidia.com/en-us/data-center/a100): BF16 Tensor Core 312 TFLOPS dense
    # (624 sparse), the same for 40GB and 80GB, SXM and PCIe.
    (r"A100", 312.0, "A100 data sheet: BF16 312 dense, 40GB and 80GB, SXM and PCIe"),
    # NVIDIA L40S data sheet: BF16 Tensor Core 362.05 dense (733 sparse); L40 data sheet: 181.05 (362.1).
    (r"L40S", 362.05, "L40S data sheet: BF16 362.05 dense"),
    (r"L40\b", 181.05, "L40 data sheet: BF16 181.05 dense"),
    # NVIDIA L4 data sheet (nvidia.com/en-us/data-center/l4): BF16 Tensor Core 242 TFLOPS with sparsity.
    (r"\bL4\b", 121.0, "L4 data sheet: BF16 242 sparse / 2"),
    # NVIDIA A10 data sheet: BF16 Tensor Core 125 dense (250 sparse). The A10G is AWS's variant of the
    # A10 with no NVIDIA data sheet of its own; the A10's number is its upper bound (MFU errs low).
    (r"A10G", 125.0, "A10 data sheet (A10G: AWS's A10 variant, no sheet of its own): BF16 125 dense"),
    (r"A10\b", 125.0, "A10 data sheet: BF16 125 dense"),
    # NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: peak BF16 Tensor TFLOPS with FP32
    # accumulate 165.2 (330.3 sparse).
    (r"RTX 4090", 165.2, "Ada Lovelace whitepaper, RTX 4090: BF16 (FP32 accumulate) 165.2 dense"),
    # NVIDIA Ampere GA102 whitepaper, GeForce RTX 3090: peak BF16 Tensor TFLOPS with FP32 accumulate 71
    # (142 sparse).
    (r"RTX 3090", 71.0, "Ampere GA102 whitepaper, RTX 3090: BF16 (FP32 accumulate) 71 dense"),
    # Volta and Turing have no BF16: their FP16 Tensor Core peak is the 16-bit peak they train at.
    # NVIDIA V100 data sheet: Tensor 125 TFLOPS (SXM2), 112 (PCIe); T4 data sheet: mixed FP16/FP32 65.
    (r"V100.*PCIE|V100S", 112.0, "V100 data sheet, PCIe: FP16 Tensor 112 (no BF16)"),
    (r"V100", 125.0, "V100 data sheet, SXM2: FP16 Tensor 125 (no BF16)"),
    (r"\bT4\b", 65.0, "T4 data sheet: mixed FP16/FP32 Tensor 65 (no BF16)"),
]


def peak_flops(gpu_name: str | None) -> float | None:
    """Dense 16-bit peak FLOP/s of the GPU NVML calls `gpu_name`; None for no GPU or an unknown one."""
    if not gpu_name:
        return None
    for pattern, tflops, _source in PEAK_BF16_TFLOPS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return tflops * 1e12
    return None


def _shape(config: Any) -> tuple[int, int]:
    """(layers, width) from a transformers config (GPT-2 and Llama spell them differently)."""
    layers = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers")
                   if isinstance(getattr(config, k, None), int)), 0)
    width = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model")
                  if isinstance(getattr(config, k, None), int)), 0)
    return layers, width


def flops_per_token(model: Any, seq_len: int, *, layers: int | None = None, width: int | None = None) -> int:
    """Training FLOPs per token: 6 per trained and 4 per frozen matmul weight, plus 12 * L * T * d."""
    import torch

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is not None and getattr(out, "weight", None) is not None:
        embeddings.discard(id(out.weight))  # a tied head multiplies: count it
    trained = frozen = 0
    for p in model.parameters():  # parameters() yields a tied tensor once
        if id(p) in embeddings:
            continue
        if p.requires_grad:
            trained += p.numel()
        else:
            frozen += p.numel()
    if layers is None or width is None:
        found = _shape(getattr(model, "config", None))
        layers, width = layers if layers is not None else found[0], width if width is not None else found[1]
    return 6 * trained + 4 * frozen + 12 * layers * seq_len * width


def mfu(flops_token: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Share of the peak used (0..1), or None when the peak is unknown (CPU, a GPU not in the table)."""
    if not peak or tokens_per_s <= 0:
        return None
    return flops_token * tokens_per_s / peak


def device_peak() -> float | None:
    """The peak of the GPU this process trains on (CUDA's name is NVML's), None on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_flops(torch.cuda.get_device_name(torch.cuda.current_device()))
