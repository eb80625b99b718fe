"""QLoRA: LoRA (lora.py) on a base quantized to 4-bit NF4 by bitsandbytes.

The recipe of the QLoRA paper: NF4 weights with double quantization (the block scales quantized too:
about 4.13 bits a parameter), bf16 compute inside the 4-bit layers (fp16 on GPUs without bf16),
paged 8-bit AdamW (spec train.optimizer = "paged_adamw8bit", the default for this technique; its
pages move to the CPU under memory pressure on CUDA; on the CPU bitsandbytes uses its plain 8-bit
AdamW). peft's prepare_model_for_kbit_training keeps the norms in fp32 for stability; under mixed
precision the frozen embeddings and head go back to 16 bits, as in the QLoRA reference code.

On CUDA the base loads straight onto this process's GPU (device_map; 4-bit weights cannot move after
loading). bitsandbytes 0.50 also runs NF4 on the CPU, so the technique is tested here. Where it
cannot run 4-bit, `preflight` says so before launch and offers LoRA (a 16-bit base, about 4x the
base's memory). Options, checkpoints and final/ are LoRA's: the adapter alone. `options.merge`
folds the adapter into a freshly loaded 16-bit (or fp32) base, never into the 4-bit one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques import lora
from engine.techniques.base import Prepared, SetupContext

loss = lora.loss
save = lora.save
load = lora.load


def device() -> Any:
    """The device this process trains on: its local GPU under accelerate/torchrun, else the CPU."""
    import torch

    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def compute_dtype() -> Any:
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16  # T4, V100: no bf16 units
    return torch.bfloat16


def check_support() -> str | None:
    """None if bitsandbytes runs a 4-bit NF4 layer forward and backward here, else why not."""
    import torch

    try:
        import bitsandbytes as bnb
    except ImportError as e:
        return f"bitsandbytes is not installed ({e}); `pip install bitsandbytes`"
    try:
        dev, dtype = device(), compute_dtype()
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, compress_statistics=True, quant_type="nf4")
        layer = layer.to(dev)
        if layer.weight.dtype != torch.uint8:
            return f"bitsandbytes {bnb.__version__} did not quantize a layer to 4 bits on {dev}"
        x = torch.randn(4, 64, device=dev, dtype=dtype, requires_grad=True)
        layer(x).float().sum().backward()
        if x.grad is None or not bool(torch.isfinite(x.grad).all()):
            return f"bitsandbytes {bnb.__version__}: the 4-bit backward pass gave no usable gradient on {dev}"
    except Exception as e:  # noqa: BLE001 - any failure means "not here"; the message says which
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"bitsandbytes cannot run 4-bit NF4 layers on {device()}: {first}"
    return None


def preflight(spec: Any) -> None:
    """Before launch: lora.preflight's checks, and a machine where 4-bit cannot run is refused with LoRA offered."""
    lora.preflight(spec, "qlora")
    problem = check_support()
    if problem:
        raise UserError(f"qlora: {problem}. LoRA trains the same adapter on an unquantized base (about 4x the "
                        "base's memory in 16 bits): use technique = \"lora\" (--set technique=lora)",
                        field="technique")


def quantization_config() -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype())


def load_quantized(spec: Any) -> tuple[Any, Any]:
    import torch

    # The whole model on this process's GPU (accelerate refuses a 4-bit model placed elsewhere), as
    # device_map={"": index}; on the CPU, "cpu". 4-bit weights are quantized while loading, never moved.
    place = local_rank() if torch.cuda.is_available() else "cpu"
    return lora.load_base(spec, dtype=lora.base_dtype(spec), quantization_config=quantization_config(),
                          device_map={"": place})


def setup(ctx: SetupContext) -> Prepared:
    spec = ctx.spec
    preflight(spec)
    ctx.progress(f"loading {spec.model.path} in 4-bit NF4")
    base, tokenizer = load_for_training(spec)
    return lora.finish_setup(ctx, base, tokenizer, "qlora", checkpointing_done=True)


def load_for_training(spec: Any) -> tuple[Any, Any]:
    """The 4-bit base prepared for adapters (also the preference techniques' qlora base)."""
    from peft import prepare_model_for_kbit_training

    base, tokenizer = load_quantized(spec)
    # fp32 norms/embeddings, frozen base; checkpointing is the spec's choice (the trainer-wide setting)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=spec.train.gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.train.precision != "fp32":
        # As the QLoRA reference code does: the frozen embeddings and head back in 16 bits (prepare_...
        # made every float fp32); autocast handles the mixed types. Norms stay fp32 for stability.
        dtype = lora.base_dtype(spec)
        base.get_input_embeddings().to(dtype)
        base.get_output_embeddings().to(dtype)
    return base, tokenizer


def load_inference(run: Path, folder: Path) -> tuple[Any, Any]:
    """The adapter on the base as it was trained (4-bit) where bitsandbytes runs, else on a full-precision base."""
    from engine.runfolder import folder as runfolder
    from engine import spec as spec_mod

    spec = spec_mod.load(Path(run) / runfolder.SPEC)
    base, tokenizer = load_quantized(spec) if check_support() is None else lora.load_base(spec)
    return lora.attach(base, folder), tokenizer
