"""Export a run's model where it will be served: a merged transformers folder, the adapter alone, or GGUF
(llama.cpp, Ollama) with a Modelfile; every export carries a model card (README.md).

What most often goes wrong on the way (an exported model answering worse than in training) is a lost chat
template or stop token, so every format keeps both: the tokenizer as trained (<run>/model/: its template and
the special tokens a named template added), a generation_config.json whose eos_token_id lists the
end-of-turn token too, and, in a GGUF, the template and the end-of-turn id in its metadata.

merged: the adapter folded into its base (merge.py); a run that trained all weights is saved as it is.
Every export is written into a hidden folder beside the target and renamed into place when complete: a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.serve.merge import locate, merged_model, run_tokenizer, save_merged

FORMATS = ("merged", "adapter", "gguf")
EXPORT_DIR = "export"  # <run>/export/<format>/ unless --out says otherwise
Progress = Callable[[str], None]


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
    for note in source.notes:
        progress(note)
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
