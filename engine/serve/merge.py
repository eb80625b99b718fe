"""The model a run trained, as one plain transformers model: final/ or a checkpoint located, an adapter folded
into its base (in the base's own dtype; QLoRA's base loaded in 4 bits as it trained and dequantized to 16
bits first, so the sum is what training saw), and the tokenizer as trained with generation_config's stop
tokens. export.py writes it; gguf.py converts it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checkpoints import store as checkpoint
from engine.errors import UserError
from engine.runfolder import folder as runfolder

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Source:
    """What is exported: final/ or a checkpoint, and whether it is a peft adapter on a base."""
    folder: Path
    name: str
    technique: str
    adapter: bool
    notes: tuple[str, ...] = ()  # what was passed over on the way, and why (a damaged final/ or checkpoint)


def locate(run: Path, checkpoint_ref: str | None = None) -> Source:
    """final/ when it is newer than the newest checkpoint (as generate picks), else that checkpoint or the asked one."""
    from engine import spec as spec_mod

    technique = spec_mod.load(run / runfolder.SPEC).technique
    folder, name, notes = checkpoint.pick_model(run, checkpoint_ref)  # verified (RELIABILITY C14)
    return Source(folder, name, technique, (folder / ADAPTER_CONFIG).is_file(), tuple(notes))


def run_tokenizer(run: Path, source: Source) -> Any:
    """The tokenizer as trained: <run>/model/ (chat template, added tokens), else the one saved beside the weights."""
    from transformers import AutoTokenizer

    for folder in (run / "model", source.folder):
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer
    raise UserError(f"run {run.name} has no tokenizer in model/ or {source.name}/", field="run")


def base_dtype(config: Any, *, sixteen: bool = False) -> Any:
    """The dtype the base was published in (its config); `sixteen`: a 32-bit one becomes bf16 (QLoRA's merge)."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.float32
    if sixteen and dtype not in (torch.float16, torch.bfloat16):
        return torch.bfloat16
    return dtype


def merged_model(run: Path, source: Source, checkpoint_ref: str | None, progress: Any) -> tuple[Any, Any]:
    """(a plain transformers model with every trained weight in it, the tokenizer as trained)."""
    if source.technique == "prompt_tuning":
        raise UserError("prompt tuning trains virtual tokens that are fed before every prompt: no weights to merge "
                        "them into. Export the adapter (--format adapter) and load it with peft", field="format")
    if not source.adapter:
        from engine.serve.generate import load_for_inference

        progress(f"loading {source.name}")
        model, tokenizer, _ = load_for_inference(run, checkpoint_ref)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model, run_tokenizer(run, source) if (run / "model" / "tokenizer_config.json").is_file() else tokenizer
    from transformers import AutoModelForCausalLM

    from engine import spec as spec_mod
    from engine.data.pack import resize_embeddings
    from engine.models.pretrained import load_config, load_weights
    from engine.techniques import lora, qlora

    spec = spec_mod.load(run / runfolder.SPEC)
    tokenizer = run_tokenizer(run, source)
    config = load_config(spec.model.path, "model.path", spec.model)
    if source.technique == "qlora" and qlora.check_support() is None:
        dtype = base_dtype(config, sixteen=True)
        progress(f"loading {spec.model.path} in 4-bit NF4 as it trained, dequantizing to {str(dtype)[6:]}")
        base, _ = qlora.load_quantized(spec)
        base = base.dequantize(dtype=dtype).to(dtype)
    else:
        dtype = base_dtype(config, sixteen=source.technique == "qlora")
        progress(f"loading {spec.model.path} in {str(dtype)[6:]}")
        base = load_weights(AutoModelForCausalLM, spec.model.path, "model.path", config, spec.model, dtype=dtype)
    resize_embeddings(base, tokenizer)  # rows for the tokens a chat template added (their trained values follow)
    progress(f"merging the adapter of {source.name}")
    return lora.attach(base, source.folder).merge_and_unload(), tokenizer


def keep_stops(model: Any, tokenizer: Any) -> list[int]:
    """generation_config: eos = the end-of-text and end-of-turn tokens, so a server stops where training ended replies."""
    from engine.serve.generate import stop_ids

    stops = stop_ids(tokenizer)
    model.config.use_cache = True  # training turned it off
    gen = model.generation_config
    gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    return stops


def save_merged(model: Any, tokenizer: Any, folder: Path) -> None:
    keep_stops(model, tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
