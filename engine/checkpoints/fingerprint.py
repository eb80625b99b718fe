"""What a checkpoint belongs to, part by part, so a refused resume can say what differs (RELIABILITY R3, R4, M5).

`parts()` flattens everything that shapes the model and the data order (the same fields as
`RunSpec.fingerprint()`, which it refines) into `{"model.width": 32, "train.batch_size": 4, ...}` and adds
what the spec cannot see: the dataset's contents (`data.contents`) and the bytes of every pretrained
folder the run starts from (`model.files`, and `options.<key>.files` for a teacher; for a Hub id, the
cached snapshot it loads from), so a LoRA adapter is never put on another base of the same shape.
`check()` compares a checkpoint's parts with the current run and raises a UserError listing each
difference, with the way to keep the trained weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.spec import CONSENT_FIELDS, VOLATILE_TRAIN

VOLATILE = ("runs_dir", "name", "eval", "checkpoint", "log")  # as RunSpec.fingerprint(): may change on resume
LABELS = {"train.batch_size": "batch size", "train.grad_accum": "gradient accumulation", "train.seq_len":
          "sequence length", "data.contents": "the dataset's contents", "model.files": "the base model's files",
          "model.path": "the model", "technique": "the technique", "data.path": "the dataset",
          "options.teacher.files": "the teacher model's files"}
SAMPLE = 1 << 20  # bytes read from each end of a weight file: the header and some weights
HUB_KEYS = ("model.path", "tokenizer.path", "options.teacher")  # settings that may name a Hub id


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def folder_digest(folder: Path) -> str:
    """A quick content hash of a model folder: config files whole, weight files by size and both ends."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        h.update(str(p.relative_to(folder)).encode())
        size = p.stat().st_size
        h.update(str(size).encode())
        with open(p, "rb") as f:
            if p.suffix in (".json", ".txt", ".model") or size <= 2 * SAMPLE:
                h.update(f.read())
            else:
                h.update(f.read(SAMPLE))
                f.seek(size - SAMPLE)
                h.update(f.read(SAMPLE))
    return h.hexdigest()[:16]


def parts(spec: Any, data_fingerprint: str | None) -> dict[str, Any]:
    d = spec.to_dict()
    for key in VOLATILE:
        d.pop(key, None)
    for key in VOLATILE_TRAIN:
        d.get("train", {}).pop(key, None)
    for key in CONSENT_FIELDS:  # opt-ins, not the model (as RunSpec.fingerprint())
        d.get("model", {}).pop(key, None)
    flat = _flatten(d)
    flat["data.contents"] = data_fingerprint
    m = spec.model  # a pinned remote-code model loads its pinned commit (engine/models/trust.py): digest that one
    pinned = (m.revision if m.trust_remote_code else "") or ""
    for key, value in list(flat.items()):
        if key in ("model.path", "tokenizer.path") or key.startswith("options."):
            folder = _model_folder(key, value, pinned if value == m.path else "")
            if folder is not None:
                flat[f"{key.removesuffix('.path')}.files"] = folder_digest(folder)
    return flat


def _model_folder(key: str, value: Any, revision: str = "") -> Path | None:
    """The files a pretrained-model setting names: a local folder, or for a Hub id the cached snapshot it
    resolves to now (a download of a newer commit moves the same id to other weights)."""
    if not isinstance(value, str) or not value:
        return None
    if Path(value).expanduser().is_dir():
        return Path(value).expanduser()
    if key not in HUB_KEYS:
        return None
    from engine.models.trust import resolve

    source = resolve(value, revision)
    return source.folder if source is not None else None


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if key.endswith(".files") and key not in saved:
            continue  # checkpoints written before Hub ids' snapshots were digested; a changed id shows itself
        a, b = saved.get(key), current.get(key)
        if a != b:
            label = LABELS.get(key, key)
            if key.endswith(".files") or key == "data.contents":
                out.append(f"{label} changed")
            else:
                out.append(f"{label} ({key}) was {a!r}, now {b!r}")
    return out


def check(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint_name: str, run: Path,
          technique: str) -> None:
    """Raise a UserError naming every difference between a checkpoint's parts and this run's."""
    if saved is None:  # written before parts were recorded: the whole-spec hash still guards it
        return
    diffs = differences(saved, current)
    if not diffs:
        return
    if technique in ("lora", "qlora", "prompt-tuning"):
        keep = ("the checkpoint holds an adapter for the base it was saved with; to keep it, resume with that "
                "base and setup, or start a new run with the new settings")
    else:
        keep = (f"to keep its trained weights, start a new run from them: a folder with {run / 'model'}/* and "
                f"{run / 'checkpoints' / checkpoint_name / 'model.safetensors'} as model.path, technique \"full\"")
    raise UserError(f"cannot resume from {checkpoint_name}, saved with a different model or data setup: "
                    + "; ".join(diffs[:6])
                    + (f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else "")
                    + f". A resume continues the same run only; {keep}", field="resume")


def version_changes(checkpoint_path: Path, current: dict[str, str]) -> list[str]:
    """Libraries whose version differs from the one that wrote the checkpoint (RELIABILITY R9): a resume
    still loads (the fingerprint matched) but says so, since kernels and defaults can change results."""
    import json

    try:
        saved = json.loads((Path(checkpoint_path) / "meta.json").read_text()).get("versions") or {}
    except (OSError, ValueError):
        return []
    return [f"{name} was {saved[name]} when {Path(checkpoint_path).name} was saved, now {version}"
            for name, version in sorted(current.items()) if name in saved and saved[name] != version]
