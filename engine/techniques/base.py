"""What every technique module provides, and the helpers they share.

A technique is a module in engine/techniques/ (named as in the spec, '-' spelt '_') with four
functions; the trainer (engine/run/trainer.py) owns everything else: the loop, accelerate, precision,
accumulation, clipping, LR schedule, controls, checkpoints, events.

    setup(ctx: SetupContext) -> Prepared
        Build tokenizer, data and model (on the CPU; the trainer moves it). Raise UserError for bad
        input. Call ctx.progress(message) during slow work and stop early when ctx.should_stop().
    loss(prep: Prepared, batch: Tensor) -> Tensor
        One micro-batch's scalar loss. `batch` is what prep.data.train_batch() returned, on the device.
    save(prep: Prepared, folder: Path, *, final: bool) -> None | dict
        Checkpoint weights into `folder` as safetensors (final=False), or the finished, loadable
        model/adapter + tokenizer (final=True; `from_pretrained` must read it). A dict returned for
        final=True goes into the `done` event; its "summary" text ends the final message (LoRA's size).
    load(prep: Prepared, folder: Path) -> None
        Load what save(final=False) wrote, strictly (a mismatch is an error, never silently skipped).

Optional:
    metrics(prep: Prepared) -> dict[str, float | list[float]]
        Extra values merged into each metrics event at the logging interval (and reset by the
        technique), e.g. MoE's router loss and the share of tokens each expert received.
    load_inference(run: Path, folder: Path) -> (model, tokenizer)
        For `llm-wizard generate` when a checkpoint or final/ is not a plain causal LM (engine/serve/generate.py).
    preflight(spec: RunSpec) -> None
        Checks that need neither data nor model, run by `llm-wizard train` before the run folder
        exists; raises UserError (QLoRA: can bitsandbytes run 4-bit here, else offer LoRA).

Hosted techniques (openai.py) train on someone else's machines: they have no setup/loss/save/load, and
provide instead, beside preflight:
    remote(ctx: RemoteContext) -> a job with start() (upload and create, or find the job the run folder
        names), poll() -> RemoteStatus (new events emitted through ctx) and cancel() -> str;
    REFUSED: {command: reason} for the controls a hosted job cannot take; STOP_QUESTION: asked before `stop`.
The job process follows it (engine/run/remote.py) instead of training.

Copy scratch.py to start a new technique: it is the smallest complete example.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import UserError

if TYPE_CHECKING:
    from engine.spec import RunSpec


@dataclass
class SetupContext:
    spec: RunSpec
    run: Path
    progress: Callable[[str], None] = lambda message: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class Prepared:
    model: Any  # torch.nn.Module
    tokenizer: Any
    data: Any  # an object with n_train_blocks, train_batch(epoch, position, batch_size), val_batches(batch_size)
    param_groups: list[dict[str, Any]]  # for the optimizer: [{"params": [...], "weight_decay": ...}, ...]
    data_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # technique-specific objects (a teacher, a config)

    def n_params(self) -> tuple[int, int]:
        """(all parameters, trainable parameters)."""
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for g in self.param_groups for p in g["params"])
        return total, trainable


def check_options(options: dict[str, Any], known: list[str], technique: str, hint: str = "") -> None:
    """Refuse an [options] key the technique does not read: a UserError naming it, a close known key ("did you
    mean"), and every key it knows (or that it takes none, with `hint` saying where such settings go)."""
    import difflib

    for key in options:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        valid = f"known: {', '.join(known)}" if known else f"{technique} takes no options{hint}"
        raise UserError(f"options.{key}: unknown for {technique}{mean}; {valid}", field=f"options.{key}")


# What a pretrained model (model.path) brings itself: the settings that build a new model and train its
# tokenizer (tokenizer.path still replaces the model's tokenizer)
SCRATCH_ONLY = {"model": ("arch", "size", "layers", "width", "heads", "dropout"),
                "tokenizer": ("kind", "vocab_size")}


def unused_settings(spec: Any) -> list[str]:
    """The spec's settings, changed from their defaults, that this run does not read: with a pretrained model
    the model's own shape and tokenizer are used, so [tokenizer] and the scratch shape of [model] are not."""
    if not spec.model.path:
        return []
    unused = []
    for section, names in SCRATCH_ONLY.items():
        value, default = getattr(spec, section), type(getattr(spec, section))()
        unused += [f"{section}.{n} = {getattr(value, n)!r}" for n in names if getattr(value, n) != getattr(default, n)]
    return unused


def with_defaults(spec: Any, defaults: dict[str, Any], technique: str) -> dict[str, Any]:
    """spec.options over the technique's `defaults`; an unknown key is a UserError naming the known ones."""
    check_options(spec.options, list(defaults), technique)
    return {**defaults, **spec.options}


def get(technique: str) -> ModuleType:
    try:
        return importlib.import_module(f"engine.techniques.{technique.replace('-', '_')}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("engine.techniques"):
            raise UserError(f"technique {technique!r} is not available in this version", field="technique") from None
        raise


def corpus_files(ctx: SetupContext) -> list[Path]:
    from engine.data.corpus import stdlib_corpus, text_files
    from engine.spec import STDLIB

    path = ctx.spec.data.path
    return stdlib_corpus() if path == STDLIB else text_files(path)


def text_blocks(ctx: SetupContext, files: list[Path], tokenizer: Any) -> Any:
    """The corpus tokenized once (cached by content hash) and cut into training/validation blocks."""
    import time

    from engine.data.token_cache import TokenBlocks, build_token_file

    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 1.0:
            last[0] = time.monotonic()
            ctx.progress(f"tokenizing: {done / max(total, 1):.0%} of {total / 1e6:.1f} MB")

    token_file = build_token_file(files, tokenizer, progress=progress, should_stop=ctx.should_stop)
    t = ctx.spec.train
    return TokenBlocks(token_file, t.seq_len, val_fraction=ctx.spec.data.val_fraction, seed=ctx.spec.seed), \
        token_file.fingerprint


def decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (not on biases, norms or embeddings' 1-D params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def causal_lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy on a (B, T+1) block: inputs are the first T ids, targets the last T."""
    import torch.nn.functional as F

    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits  # a KV cache is for generation: no per-layer cat
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


MODEL_WEIGHTS = "model.safetensors"


def save_whole_model(prep: Prepared, folder: Path, *, final: bool) -> None:
    """The techniques that train every weight (scratch, full, distill's student, moe) save alike:
    a checkpoint is one safetensors file (save_model handles GPT-2's tied embedding/head weights);
    final/ is a from_pretrained folder with its tokenizer and the KV cache that training turned off."""
    from safetensors.torch import save_model

    from engine.models.pretrained import unwrap

    model = unwrap(prep.model)
    if final:
        model.config.use_cache = True
        model.save_pretrained(folder, safe_serialization=True)
        prep.tokenizer.save_pretrained(folder)
    else:
        save_model(model, str(folder / MODEL_WEIGHTS))


def load_whole_model(prep: Prepared, folder: Path) -> None:
    """What save_whole_model(final=False) wrote, strictly: a missing or extra tensor is an error."""
    from safetensors.torch import load_model

    from engine.models.pretrained import unwrap

    load_model(unwrap(prep.model), str(folder / MODEL_WEIGHTS), strict=True)


# ---- hosted techniques --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteStatus:
    """Where a hosted job stands, as its technique's poll() reads it; `state` is one of the run's states."""
    state: str  # starting | running | done | failed | stopped
    message: str
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    final: str | None = None  # done: the final/ file naming the trained model
    summary: str | None = None  # done: the last line the user reads
    error: str | None = None  # failed: the reason, as the service gave it
    error_kind: str = "internal"  # user: the data or a setting was refused (the message says which)


class RemoteContext(Protocol):
    """What a hosted technique gets from the job that follows it (engine/run/remote.py)."""
    run: Path
    spec: RunSpec

    def emit(self, event: Any) -> None: ...  # an engine.runfolder.events.Event

    def say(self, message: str) -> None: ...  # what it is doing now (status.json's message)

    def remember(self, **values: Any) -> None: ...  # kept in the run folder at once (remote ids: never twice)

    def recall(self) -> dict[str, Any]: ...

    def should_stop(self) -> bool: ...
