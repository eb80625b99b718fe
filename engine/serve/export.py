"""Export a run's model where it will be served: a merged transformers folder, the adapter alone, or GGUF
(llama.cpp, Ollama) with a Modelfile; every export carries a model card (README.md).

What most often goes wrong on the way (an exported model answering worse than in training) is a lost chat
template or stop token, so every format keeps both: the tokenizer as trained (<run>/model/: its template and
the special tokens a named template added), a generation_config.json whose eos_token_id lists the
end-of-turn token too, and, in a GGUF, the template and the end-of-turn id in its metadata.

merged: an adapter (LoRA, QLoRA) is folded into its base loaded afresh in the base's own dtype (QLoRA: the
base quantized to 4 bits as it trained, dequantized to 16 bits, then merged, so the sum is what training
saw); a run that trained all weights is saved as it is. Every export is written into a hidden folder
beside the target and renamed into place when complete: a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoints import store as checkpoint
from engine.errors import UserError
from engine.runfolder import folder as runfolder

FORMATS = ("merged", "adapter", "gguf")
EXPORT_DIR = "export"  # <run>/export/<format>/ unless --out says otherwise
ADAPTER_CONFIG = "adapter_config.json"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """What is exported: final/ or a checkpoint, and whether it is a peft adapter on a base."""
    folder: Path
    name: str
    technique: str
    adapter: bool


@dataclass(frozen=True)
class Exported:
    """The result `export --json` prints."""
    format: str
    path: str  # the export folder
    source: str  # "final" or a checkpoint's name
    technique: str
    files: list[str]
    bytes: int
    dtype: str | None = None  # merged weights' dtype
    quant: str | None = None  # gguf
    gguf: str | None = None  # the .gguf file
    modelfile: str | None = None
    writer: str | None = None  # gguf: "llama.cpp" (its converter) or "gguf-py" (the gguf package's writer)
    notes: list[str] = field(default_factory=list)  # what a person should know (a fallback taken, and why)
    pushed: dict[str, Any] | None = None  # {"repo", "url", "commit"} after --push

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def locate(run: Path, checkpoint_ref: str | None = None) -> Source:
    """final/ when it is newer than the newest checkpoint (as generate picks), else that checkpoint or the asked one."""
    from engine import spec as spec_mod

    technique = spec_mod.load(run / runfolder.SPEC).technique
    final = run / "final"
    newest = checkpoint.find_resume(run)
    if checkpoint_ref is None and final.is_dir() and (newest is None or final.stat().st_mtime >= newest.created):
        return Source(final, "final", technique, (final / ADAPTER_CONFIG).is_file())
    target = checkpoint.find(run, checkpoint_ref) if checkpoint_ref is not None else newest
    if target is None:
        raise UserError(f"run {run.name} has no checkpoint or final model yet", field="run")
    return Source(target.path, target.name, technique, (target.path / ADAPTER_CONFIG).is_file())


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


def merged_model(run: Path, source: Source, checkpoint_ref: str | None, progress: Progress) -> tuple[Any, Any]:
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


def default_out(run: Path, fmt: str, quant: str | None) -> Path:
    return run / EXPORT_DIR / (f"{fmt}-{quant}" if fmt == "gguf" else fmt)


@contextmanager
def staged(target: Path, *, force: bool) -> Iterator[Path]:
    """A hidden folder beside `target`, renamed to it when the block ends without error, else removed."""
    if target.exists() and not force:
        raise UserError(f"{target} already exists: give another --out, or --force to replace it", field="out")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def export(run: Path, fmt: str, *, checkpoint_ref: str | None = None, quant: str | None = None,
           out: Path | None = None, force: bool = False, progress: Progress = lambda _: None) -> Exported:
    """Write the export folder and return what it holds (README.md model card in every format)."""
    from engine.serve import card, gguf

    if fmt not in FORMATS:
        raise UserError(f"--format: one of {', '.join(FORMATS)}, got {fmt!r}", field="format")
    if fmt != "gguf" and quant is not None:
        raise UserError("--quant applies to --format gguf only", field="quant")
    quant = gguf.check_quant(quant or "f16") if fmt == "gguf" else None
    source = locate(run, checkpoint_ref)
    target = Path(out).expanduser().resolve() if out else default_out(run, fmt, quant)
    extra: dict[str, Any] = {}
    with staged(target, force=force) as tmp:
        if fmt == "adapter":
            if not source.adapter:
                raise UserError(f"run {run.name} trained all weights ({source.technique}): there is no adapter; "
                                "use --format merged", field="format")
            progress(f"copying the adapter of {source.name}")
            for f in source.folder.iterdir():  # the peft folder (a checkpoint's optimizer state is not part of it)
                if f.is_file() and (f.name.startswith("adapter_") or f.name == "README.md"):
                    shutil.copy2(f, tmp / f.name)
            run_tokenizer(run, source).save_pretrained(tmp)
        else:
            model, tokenizer = merged_model(run, source, checkpoint_ref, progress)
            extra["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
            if fmt == "merged":
                progress(f"saving the merged model ({extra['dtype']})")
                save_merged(model, tokenizer, tmp)
            else:
                if model.config.is_encoder_decoder:
                    raise UserError(f"{model.config.model_type} is an encoder-decoder: llama.cpp runs decoder-only "
                                    "models; export --format merged instead", field="format")
                extra.update(gguf.export_gguf(model, tokenizer, tmp, quant, run.name, progress))
                del model
        card.write(run, tmp, fmt=fmt, source=source.name, quant=quant)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    final_extra = {k: (str(target / Path(v).name) if k in ("gguf", "modelfile") and v else v) for k, v in extra.items()}
    return Exported(format=fmt, path=str(target), source=source.name, technique=source.technique, files=files,
                    bytes=size, quant=quant, **final_extra)
