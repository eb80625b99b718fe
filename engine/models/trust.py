"""What may run when a model or checkpoint is read (RELIABILITY S3, M3/S4, S2).

A torch whose `torch.load(weights_only=True)` is known to be unsafe is refused at start-up (S3). A model
that needs its own Python code (config.json auto_map) loads only when the user opted in for that model with
a pin (M3). Pickle-only weights are refused unless allowed, and then read as plain tensors only (S2).

Checkpoints hold optimizer and RNG state read with `weights_only=True`; that restricted unpickler had
remote-code-execution bypasses in older torch releases, so a job refuses to start on one of them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.hub.pins import pinned

MIN_TORCH = (2, 10)  # the version RELIABILITY.md S3 names as the one with the fixes


def check_torch(version: str | None = None) -> None:
    if version is None:
        import torch

        version = torch.__version__
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m.group(1)), int(m.group(2))) < MIN_TORCH:
        raise UserError(f"torch {version} is too old to load checkpoints safely (torch.load's weights_only "
                        f"checks were bypassable before {MIN_TORCH[0]}.{MIN_TORCH[1]}): upgrade torch "
                        "(pip install -U torch)", field="torch")


# ---- a model's own code and pickled weights (RELIABILITY M3/S4, S2) -------------------------------

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")  # torch.save files: unpickling them can run code
COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a local folder, or the Hub cache snapshot a Hub id resolves to."""

    name: str  # as the user gave it
    folder: Path
    commit: str | None  # the snapshot's commit hash for a Hub id; a local folder has none


@dataclass(frozen=True)
class RemoteCode:
    """The Python files loading a model would import, and the pin an opt-in must name."""

    source: ModelSource
    files: tuple[str, ...]  # relative to source.folder; what auto_map names first
    code_sha256: str
    model_type: str

    def pin(self) -> tuple[str, str]:
        """(setting, value): a Hub snapshot is pinned by its commit; a local folder has no commit, so by
        the sha256 of its code files (any change to them needs a new opt-in)."""
        if self.source.commit:
            return "revision", self.source.commit
        return "code_sha256", self.code_sha256

    def opt_in(self) -> str:
        key, value = self.pin()
        return f'model.trust_remote_code = true and model.{key} = "{value}"'


def resolve(path: str, revision: str = "") -> ModelSource | None:
    """The folder `path` names, or the cached snapshot of a Hub id (`revision` picks a cached commit);
    None when neither exists (the loader's own not-found message is clearer then)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return ModelSource(path, folder, None)
    if not path or path.startswith((".", "/", "~")) or path.count("/") > 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    revision = revision or pinned(path)  # a run loads the commit it resolved at launch (engine/hub/pins.py)

    found = try_to_load_from_cache(path, "config.json", revision=revision or None)
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent  # <cache>/models--org--name/snapshots/<commit>/config.json
    return ModelSource(path, snapshot, snapshot.name if COMMIT.fullmatch(snapshot.name) else None)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _modules(auto_map: Any) -> list[str]:
    """'modeling_x.XModel' -> 'modeling_x.py'; 'org/repo--modeling_x.XModel' (code from another repo) kept as is."""
    values = auto_map.values() if isinstance(auto_map, dict) else []
    out = []
    for value in values:
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "." in ref:
                module = ref.rsplit(".", 1)[0]
                name = module if "--" in module else module.replace(".", "/") + ".py"
                if name not in out:
                    out.append(name)
    return out


def code_sha256(folder: Path) -> str:
    """sha256 over every .py file of the folder (name and bytes, sorted): the files auto_map names and
    any they import relatively (transformers copies those from the same folder), so the pin covers all
    code that would run."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def remote_code(source: ModelSource) -> RemoteCode | None:
    """The code loading this model needs, or None: config.json's auto_map matters only when transformers
    does not know the model type itself (then it uses its own classes and no file of the model runs)."""
    config = _json(source.folder / "config.json")
    if not config.get("auto_map"):
        return None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = str(config.get("model_type", ""))
    if model_type in CONFIG_MAPPING_NAMES:
        return None
    named = _modules(config["auto_map"]) + _modules(_json(source.folder / "tokenizer_config.json").get("auto_map"))
    others = [str(p.relative_to(source.folder)) for p in sorted(source.folder.rglob("*.py"))]
    files = list(dict.fromkeys(named + others))
    return RemoteCode(source, tuple(files), code_sha256(source.folder), model_type)


def check_remote_code(path: str, field: str, model: Any = None) -> tuple[str, bool]:
    """(what to load, trust_remote_code) for `path`. Code runs only when `model` (the spec's ModelSpec for
    this very path) opts in with a pin that matches; otherwise a UserError names the files and the exact
    setting. Nothing of the model is imported here."""
    consent = model is not None and getattr(model, "path", None) == path and model.trust_remote_code
    revision = (model.revision if consent else "") or ""
    source = resolve(path, revision)
    if source is None:
        if revision:
            raise UserError(f"model.revision: {revision} of {path!r} is not in the local Hub cache "
                            "(offline: only cached snapshots can load)", field="model.revision")
        return path, False
    code = remote_code(source)
    if code is None:  # a pinned Hub id loads from its snapshot folder: no look-up of where main is now
        return (str(source.folder) if source.commit and pinned(path) else path), False
    files = ", ".join(code.files) or "(none found: auto_map names modules that are not there)"
    where = f"{path!r}" + (f" (Hub cache snapshot {source.commit})" if source.commit else "")
    foreign = [f for f in code.files if "--" in f]
    if foreign:
        raise UserError(f"{field}: {where} names code in another repository ({', '.join(foreign)}), which "
                        "cannot be pinned; it is never run", field=field)
    if not consent:
        offer = (f"after reading them, opt in for this model: {code.opt_in()}" if field == "model.path" else
                 f"only model.path can opt in to running a model's code; use a {field} that transformers knows")
        raise UserError(f"{field}: {where} needs its own Python code to load (config.json auto_map; model type "
                        f"{code.model_type!r} is not one transformers knows); it would run {files}. Nothing was "
                        f"run. Remote code is off: {offer}", field=field)
    key, expected = code.pin()
    given = getattr(model, key, "")
    if not given:
        raise UserError(f"model.trust_remote_code needs a pin for {where}: add model.{key} = \"{expected}\" "
                        f"after reading {files}", field=f"model.{key}")
    if given != expected:
        what = "its code files have sha256" if key == "code_sha256" else "the cached snapshot is"
        raise UserError(f"model.{key}: {what} {expected}, not the pinned {given}: the code changed since it "
                        f"was pinned; read {files} again and update the pin. Nothing was run.", field=f"model.{key}")
    return str(source.folder), True


def pickle_only(folder: Path) -> list[str]:
    """The pickle weight files of a folder that has no safetensors (empty: nothing to consent to)."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return []
    return sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))


def weight_options(path: str, field: str, allow_pickle: bool = False) -> dict[str, Any]:
    """from_pretrained arguments for the weight files of `path`: safetensors when there are any (never the
    pickle files beside them); pickle-only weights (.bin/.pt/.pth) are refused unless allowed, and even
    then read with weights_only=True only (an object that needs more fails; there is no retry)."""
    source = resolve(path)
    if source is None:
        return {"weights_only": True}
    if any(p.suffix == ".safetensors" for p in source.folder.iterdir()):
        return {"use_safetensors": True, "weights_only": True}
    pickled = pickle_only(source.folder)
    if pickled and not allow_pickle:
        setting = "model.allow_pickle_weights = true" if field == "model.path" else "safetensors weights"
        raise UserError(f"{field}: {path!r} has only pickle weights ({', '.join(pickled)}): a pickle file can "
                        "run code when read. safetensors is preferred (convert with save_pretrained("
                        f"safe_serialization=True) where you trust the file); to read them as plain tensors "
                        f"(torch.load weights_only=True, nothing else) set {setting}", field=field)
    return {"use_safetensors": False, "weights_only": True} if pickled else {"weights_only": True}
