"""The run spec: typed sections with help text and validation, read from and written to TOML.

A spec is everything a run needs to be reproduced: `llm-wizard train <run>/spec.toml` reruns it.
Every field carries its help text in `metadata["help"]` (the TUI shows it as the hint). Validation
happens in `__post_init__` and raises `UserError` naming the field (`train.batch_size`), so bad input
never reaches torch. Techniques that need their own settings read the free `[options]` table and
validate it in their `setup()`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine import vocabulary
from engine.errors import UserError
from engine.fields import bad as _bad, check as _check, check_keys as _check_keys, choice as _choice, setting as _f
from engine.fields import coerce_types as _coerce_types, exists as _exists, key_text as _key_text, plain_values as _plain_values
from engine.fields import set_value, toml_value as _toml_value  # noqa: F401 (set_value: spec.set_value for callers)

# The names a setting takes are engine/vocabulary.py's; the spec accepts those the run engine trains.
TECHNIQUES = vocabulary.names(vocabulary.TECHNIQUES)
PRECISIONS = vocabulary.names(vocabulary.PRECISIONS, trained=True)
OPTIMIZERS = vocabulary.names(vocabulary.OPTIMIZERS, trained=True)
STRATEGIES = vocabulary.names(vocabulary.STRATEGIES, trained=True)  # several processes: replicate or shard
SCHEDULES, TOKENIZERS, FIND_BATCH = vocabulary.SCHEDULES, vocabulary.TOKENIZERS, vocabulary.FIND_BATCH
STDLIB, DATA_FORMATS = vocabulary.STDLIB, vocabulary.DATA_FORMATS
# train settings a technique starts from when the spec leaves them out (fine-tuning wants a smaller LR
# than scratch's 3e-4: large steps wipe out what pretraining learned; QLoRA's paper uses paged 8-bit AdamW)
TECHNIQUE_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"lr": 2e-5}, "lora": {"lr": 2e-4}, "qlora": {"lr": 2e-4, "optimizer": "paged_adamw8bit"},
    "dpo": {"lr": 5e-6}, "orpo": {"lr": 5e-6}}  # LLaMA-Factory's DPO/ORPO examples; the policy must stay near its start
CONSENT_FIELDS = ("trust_remote_code", "revision", "code_sha256", "allow_pickle_weights")  # ModelSpec opt-ins
# train settings a resume may change (RunSpec.fingerprint and engine/checkpoints/fingerprint.parts leave them out): the
# schedule's length and shape, threads, and the guards; the batch finder's choice is in the checkpoint.
VOLATILE_TRAIN = ("threads", "max_steps", "epochs", "lr", "schedule", "warmup_steps", "min_lr_ratio", "find_batch",
                  "nonfinite_patience", "spike_patience", "spike_skip", "auto_rollback", "auto_rollback_max")
MAX_SEED = 2 ** 32 - 1  # what every seeded library takes (numpy's legacy seed is the narrowest)
DEFAULT_TEMPLATE = "### Prompt:\n{prompt}\n### Response:\n{response}"


@dataclass
class ModelSpec:
    arch: str = _f("gpt2", "scratch architecture: gpt2 or llama", choices=vocabulary.names(vocabulary.ARCHS))
    size: str = _f("tiny", "scratch size preset (tiny, 10M, 125M, 350M, 1B, 7B)", choices=vocabulary.SIZES)
    layers: int = _f(0, "override the size's number of layers (0 = the size's)", low=">= 0")
    width: int = _f(0, "override the size's hidden width (0 = the size's)", low=">= 0")
    heads: int = _f(0, "override the size's attention heads (0 = the size's)", low=">= 0")
    dropout: float = _f(0.0, "dropout in the scratch model (0 is usual for short runs)", low=">= 0")
    path: str = _f("", "a pretrained model: Hub id or local folder (fine-tuning techniques)")
    # Opt-ins for model.path (engine/models/trust.py, RELIABILITY M3 and S2): written to spec.toml only when set.
    trust_remote_code: bool = _f(False, "run this model's own Python code (config.json auto_map); needs a pin: "
                                        "revision (Hub id) or code_sha256 (folder)", quiet=True)
    revision: str = _f("", "the Hub cache snapshot commit (40 hex) that trust_remote_code is pinned to", quiet=True)
    code_sha256: str = _f("", "sha256 of a local folder's code files that trust_remote_code is pinned to", quiet=True)
    allow_pickle_weights: bool = _f(False, "load .bin/.pt weights when there are no safetensors (read as plain "
                                           "tensors only, weights_only=True)", quiet=True)

    def __post_init__(self) -> None:
        _check("model", self)
        if self.dropout >= 1:
            raise _bad("model", "dropout", f"must be below 1, got {self.dropout}")
        for name, pattern, what in (("revision", "[0-9a-f]{40}", "a 40-digit commit hash"),
                                    ("code_sha256", "[0-9a-f]{64}", "a 64-digit sha256")):
            value = getattr(self, name)
            if value and not re.fullmatch(pattern, value):
                raise _bad("model", name, f"must be {what} (lower-case hex), got {value!r}")
            if value and not self.trust_remote_code:
                raise _bad("model", name, "pins the model's code: it goes with trust_remote_code = true")


@dataclass
class TokenizerSpec:
    kind: str = _f("bpe", "bpe (trained on your text), byte (256 symbols) or char (the book's char-level)",
                   choices=TOKENIZERS)
    vocab_size: int = _f(512, "BPE vocabulary size (ignored for byte and char)", low="> 0")
    path: str = _f("", "an existing tokenizer folder instead of training one")

    def __post_init__(self) -> None:
        _check("tokenizer", self)
        if self.kind == "bpe" and self.vocab_size < 64:
            raise _bad("tokenizer", "vocab_size", f"a BPE vocabulary needs at least 64 entries, got {self.vocab_size}")


@dataclass
class DataSpec:
    path: str = _f("", f"a text file or folder; {STDLIB!r} = Python's standard library source; a JSONL/JSON/CSV/"
                       "Parquet/Arrow file, a dataset folder, a Slack export, or a Hub dataset id (format = hub)")
    format: str = _f("auto", "the examples' layout: auto (detected), " + ", ".join(DATA_FORMATS[1:]),
                     choices=DATA_FORMATS)
    template: str = _f("auto", "chat template: auto (the model's own), plain, chatml, llama-3, gemma, alpaca, vicuna, "
                               "zephyr, mistral, or your own text with {prompt} and {response}")
    train_on: str = _f("assistant", "which tokens carry the loss: assistant (every reply), last_assistant, or all",
                       choices=vocabulary.TRAIN_ON)
    packing: bool = _f(True, "pack several whole examples into each sequence (each still sees only itself)")
    on_bad_row: str = _f("error", "a bad row stops the run with its file:line (error), or is counted and left out "
                                  "(skip)", choices=vocabulary.ON_BAD_ROW)
    val_fraction: float = _f(0.05, "share of the token blocks held out for validation", low=">= 0")
    text_column: str = _f("", "column holding plain text (empty = text, content, body, message or document)")
    messages_column: str = _f("", "column holding a conversation (empty = messages or conversations)")
    prompt_column: str = _f("", "column with the prompt (with response_column: one exchange a row)")
    response_column: str = _f("", "column with the response (trained on)")
    system_column: str = _f("", "column with a system prompt for prompt/response rows")
    label_column: str = _f("", "column with a class label: rows become 'text : ... Label : <label>'")
    slack_user: str = _f("", "Slack export: the user (id, name or display name) whose replies are learned")
    context: int = _f(4, "Slack export: preceding messages kept as the prompt of each reply", low=">= 0")
    split: str = _f("train", "dataset folder or Hub dataset: the split to train on")
    subset: str = _f("", "dataset folder or Hub dataset: the configuration (subset) name, if it has several")

    def __post_init__(self) -> None:
        if not self.path:
            raise _bad("data", "path", "is required: a text file, a folder, or 'stdlib'")
        _check("data", self)
        if self.format == "hub":
            if self.path.startswith((".", "/", "~")) or self.path.count("/") > 1:
                raise _bad("data", "path", f"a Hub dataset id looks like 'owner/name', got {self.path!r}")
        elif self.path != STDLIB and not _exists(self.path):
            hint = " (for a Hub dataset set data.format = \"hub\")" if self.path.count("/") == 1 else ""
            raise _bad("data", "path", f"file or folder not found: {self.path}{hint}")
        if self.val_fraction >= 0.5:
            raise _bad("data", "val_fraction", f"must be below 0.5, got {self.val_fraction}")
        if bool(self.prompt_column) != bool(self.response_column):
            raise _bad("data", "response_column" if self.prompt_column else "prompt_column",
                       "set prompt_column and response_column together")
        if self.label_column and self.prompt_column:
            raise _bad("data", "label_column", "use either a label column or prompt/response columns, not both")
        if "{response}" not in self.template and self.template not in vocabulary.CHAT_TEMPLATES:
            raise _bad("data", "template", f"unknown template {self.template!r}: choose "
                       f"{', '.join(vocabulary.CHAT_TEMPLATES)}, or write one with {{prompt}} and {{response}}")
        if "{response}" in self.template and (self.template.count("{response}") != 1
                                               or self.template.count("{prompt}") > 1
                                               or self.template.find("{prompt}") > self.template.find("{response}")):
            raise _bad("data", "template", "needs {response} once, after at most one {prompt}: "
                       f"e.g. {DEFAULT_TEMPLATE!r}")


@dataclass
class TrainSpec:
    seq_len: int = _f(128, "tokens per training sequence (context length)", low="> 0")
    batch_size: int = _f(8, "sequences per micro-batch (prefer a power of two)", low="> 0")
    grad_accum: int = _f(1, "micro-batches per optimizer step (saves memory, same effective batch)", low="> 0")
    lr: float = _f(3e-4, "peak learning rate", low="> 0")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up: cosine, linear or constant",
                        choices=SCHEDULES)
    warmup_steps: int = _f(0, "optimizer steps of linear warm-up", low=">= 0")
    min_lr_ratio: float = _f(0.1, "the schedule's floor as a share of the peak LR", low=">= 0")
    max_steps: int = _f(0, "optimizer steps to train (0 = use epochs)", low=">= 0")
    epochs: float = _f(1.0, "passes over the training data when max_steps is 0", low=">= 0")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)", low=">= 0")
    weight_decay: float = _f(0.0, "AdamW weight decay", low=">= 0")
    optimizer: str = _f("adamw", "adamw, adamw8bit, paged_adamw8bit (bitsandbytes; QLoRA's default) or sgd",
                         choices=OPTIMIZERS)
    precision: str = _f("fp32", "fp32; mixed precision over fp32 weights: bf16 or fp16 (fp16 needs a GPU); or "
                                "bf16-pure: all bf16, half the memory, small updates round away",
                         choices=PRECISIONS)
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    compile: bool = _f(False, "torch.compile the model (faster after a slow first step)")
    oom_backoff: bool = _f(False, "on out-of-memory, halve the micro-batch and double accumulation")
    find_batch: str = _f("auto", "before the first step, probe for the largest micro-batch that fits (same "
                                 "effective batch): on, off, or auto (on a GPU when the estimate is tight)",
                         choices=FIND_BATCH)
    threads: int = _f(0, "CPU threads for torch (0 = torch's default; 1 suits tiny CPU runs)", low=">= 0")
    nonfinite_patience: int = _f(3, "non-finite steps in a row (each skipped) before the run pauses or rolls back",
                                 low="> 0")
    spike_patience: int = _f(3, "logging intervals in a row with a loss spike before the run pauses or rolls back",
                             low="> 0")
    spike_skip: bool = _f(True, "skip a single optimizer step whose loss is a clear outlier (over 3x the smoothed "
                          "loss and 6 spreads above it; off in warm-up and the first 10 logged intervals)")
    auto_rollback: bool = _f(False, "instead of pausing on those: roll back to the newest checkpoint before it, "
                             "halve the LR and skip that data (at most auto_rollback_max times, then pause)")
    auto_rollback_max: int = _f(3, "automatic rollbacks allowed before the run pauses for you", low=">= 0")

    def __post_init__(self) -> None:
        _check("train", self)
        low, high = vocabulary.LR_RANGE
        if not low <= self.lr <= high:
            raise _bad("train", "lr", f"must be from {low:g} to {high:g}, got {self.lr!r}")
        if self.min_lr_ratio > 1:
            raise _bad("train", "min_lr_ratio", f"must be at most 1, got {self.min_lr_ratio}")
        if self.max_steps == 0 and self.epochs == 0:
            raise _bad("train", "max_steps", "set max_steps or epochs above 0")
        if self.max_steps and self.warmup_steps >= self.max_steps:
            raise _bad("train", "warmup_steps", f"{self.warmup_steps} is not below max_steps {self.max_steps}")

    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum


@dataclass
class EvalSpec:
    every: int = _f(100, "optimizer steps between evaluations on the validation split (0 = never)", low=">= 0")
    batches: int = _f(8, "validation batches per evaluation (0 = the whole split)", low=">= 0")
    patience: int = _f(0, "stop early after this many evaluations in a row without a lower eval loss (0 = never)",
                       low=">= 0", quiet=True)
    prompts: list[str] = _f([], "prompts sampled (greedy, through the chat template for chat data) at each "
                                "evaluation; shown on the dashboard", quiet=True)
    sample_tokens: int = _f(48, "tokens generated for each of eval.prompts", low="> 0", quiet=True)

    def __post_init__(self) -> None:
        _check("eval", self)
        _strings("eval", "prompts", self.prompts)


@dataclass
class CheckpointSpec:
    every: int = _f(200, "optimizer steps between checkpoints (0 = only at the end and on request)", low=">= 0")
    keep: int = _f(3, "checkpoints kept on the active branch (the best is kept as well)", low="> 0")
    final: str = _f("last", "what final/ holds: the last weights, or the best checkpoint by eval loss (best also "
                            "saves a checkpoint at each evaluation that improves)", choices=vocabulary.FINAL_CHOICES,
                    quiet=True)

    def __post_init__(self) -> None:
        _check("checkpoint", self)
        if self.keep < 2:
            raise _bad("checkpoint", "keep", f"keep at least 2 so that a save never leaves none, got {self.keep}")


@dataclass
class LogSpec:
    every: int = _f(10, "optimizer steps between metrics events (each costs one device sync)", low="> 0")
    tensorboard: bool = _f(True, "write TensorBoard event files to <run>/tb/ (`tensorboard --logdir <run>/tb`)",
                           quiet=True)
    trackers: list[str] = _f([], "other experiment trackers fed the same metrics: "
                                 + ", ".join(vocabulary.TRACKERS) + " (each needs its package installed)", quiet=True)

    def __post_init__(self) -> None:
        _check("log", self)
        _strings("log", "trackers", self.trackers)
        for name in self.trackers:
            if name not in vocabulary.TRACKERS:
                raise _bad("log", "trackers", f"unknown tracker {name!r}: choose from {', '.join(vocabulary.TRACKERS)} "
                           "(TensorBoard is log.tensorboard)")


@dataclass
class NotifySpec:
    urls: list[str] = _f([], "where to tell a person: Apprise URLs (ntfy://, slack://, discord://, mailto://, json://"
                             "...) or a plain http(s) webhook; `$NAME` reads a URL holding a secret from the "
                             "environment", quiet=True)
    severity: str = _f("error", "alerts from this severity up are sent too (besides done, failed, a guard's pause "
                                "and an automatic rollback); none: no alerts", choices=vocabulary.NOTIFY_SEVERITIES,
                       quiet=True)

    def __post_init__(self) -> None:
        _check("notify", self)
        _strings("notify", "urls", self.urls)
        for url in self.urls:
            if not url.startswith("$") and "://" not in url:
                raise _bad("notify", "urls", f"{url!r} is not a URL (scheme://...) or a $NAME of one")


def _strings(section: str, name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(section, name, f"must be a list of texts, got {value!r}")


@dataclass
class DistributedSpec:
    num_processes: int = _f(1, "training processes in all (one per GPU); above 1 the run goes through "
                               "`accelerate launch`", low="> 0")
    num_machines: int = _f(1, "machines taking part (each runs `llm-wizard train --print-launch`'s command)", low="> 0")
    machine_rank: int = _f(0, "this machine's index, 0 to num_machines - 1 (0 hosts the rendezvous)", low=">= 0")
    main_process_ip: str = _f("", "address of machine 0, reachable from every machine (several machines)")
    main_process_port: int = _f(29500, "rendezvous port on machine 0 (one machine: a free port is picked)")
    strategy: str = _f("ddp", "ddp (a full copy per GPU), fsdp (sharded), zero2 or zero3 (DeepSpeed)",
                        choices=STRATEGIES)

    def __post_init__(self) -> None:
        _check("distributed", self)
        if self.num_processes % self.num_machines:
            raise _bad("distributed", "num_processes", f"{self.num_processes} does not split evenly over "
                       f"{self.num_machines} machines")
        if self.machine_rank >= self.num_machines:
            raise _bad("distributed", "machine_rank", f"must be below num_machines ({self.num_machines}), "
                       f"got {self.machine_rank}")
        if self.num_machines > 1 and not self.main_process_ip:
            raise _bad("distributed", "main_process_ip", "several machines need the address of machine 0")
        if not 0 < self.main_process_port < 65536:
            raise _bad("distributed", "main_process_port", f"not a TCP port: {self.main_process_port}")


@dataclass
class RunSpec:
    technique: str = _f("scratch", "how to train: " + ", ".join(TECHNIQUES), choices=TECHNIQUES)
    name: str = _f("run", "a short name; the run id is <time>-<name>-<suffix>")
    seed: int = _f(0, "random seed for weights, data order and dropout")
    runs_dir: str = _f("", "where runs live (empty = --runs-dir, $LLM_WIZARD_RUNS or the default)")
    model: ModelSpec = field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    data: DataSpec = field(default_factory=lambda: DataSpec(path=STDLIB))
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    log: LogSpec = field(default_factory=LogSpec)
    notify: NotifySpec = field(default_factory=NotifySpec)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    options: dict[str, Any] = _f({}, "technique-specific settings (validated by the technique)")

    def __post_init__(self) -> None:
        _choice("", self, "technique", TECHNIQUES)  # its sections check themselves
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise UserError(f"name: use letters, digits, '-', '_' or '.', got {self.name!r}", field="name")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed: must be a whole number from 0 to {MAX_SEED}, got {self.seed!r}", field="seed")
        if self.train.find_batch == "on" and self.distributed.num_processes > 1:
            # each rank would probe on its own while DDP's backward waits for all of them
            raise UserError("train.find_batch: the batch finder runs in one process only; with several set "
                            "train.batch_size and train.grad_accum (or find_batch = \"auto\")",
                            field="train.find_batch")
        if self.train.precision == "bf16-pure" and self.distributed.num_processes > 1 and \
                self.distributed.strategy in ("zero2", "zero3"):
            # DeepSpeed, not told of bf16 (no autocast), would keep its own fp32 partitions: not pure, untested
            raise UserError("train.precision: bf16-pure trains in one process, or with ddp or fsdp; for "
                            "DeepSpeed (zero2, zero3) use bf16 (mixed precision)", field="train.precision")
        for needs_eval in ("eval.patience", "eval.prompts", "checkpoint.final"):
            section, name = needs_eval.split(".")
            value = getattr(getattr(self, section), name)
            if value and value != "last" and not self.eval.every:
                raise UserError(f"{needs_eval}: needs evaluations; set eval.every above 0", field=needs_eval)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """What must not change across a resume: everything that shapes the model and the data order."""
        d = self.to_dict()
        for volatile in ("runs_dir", "name", "eval", "checkpoint", "log", "notify", "distributed"):  # DDP checkpoints fit any layout
            d.pop(volatile, None)
        for consent in CONSENT_FIELDS:  # permissions, not the model: the model's files are fingerprinted
            d["model"].pop(consent, None)
        for volatile in VOLATILE_TRAIN:
            d["train"].pop(volatile, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = {
    "model": ModelSpec, "tokenizer": TokenizerSpec, "data": DataSpec, "train": TrainSpec,
    "eval": EvalSpec, "checkpoint": CheckpointSpec, "log": LogSpec, "notify": NotifySpec,
    "distributed": DistributedSpec,
}


def _coerce(section: str, cls: type, values: dict[str, Any]) -> Any:
    names = [f.name for f in fields(cls)]
    if section == "data":  # the former settings, read as today's
        if isinstance(values.get("format"), str) and values["format"] in vocabulary.FORMER_DATA_FORMATS:
            values["format"] = vocabulary.FORMER_DATA_FORMATS[values["format"]]
        if "mask_prompt" in values:
            if values.pop("mask_prompt") is False:
                values["train_on"] = "all"
    _check_keys(f"{section}.", values, names, vocabulary.FOREIGN_NAMES)
    if section == "train" and isinstance(values.get("find_batch"), bool):
        values["find_batch"] = "on" if values["find_batch"] else "off"  # `find_batch = true` reads as on
    _coerce_types(section, cls, values)
    return cls(**values)


def from_dict(data: dict[str, Any], *, base_dir: Path | None = None) -> RunSpec:
    """Build and validate a spec; relative data/model/tokenizer paths are taken from `base_dir`."""
    _plain_values(data)  # a TOML date or time is no setting's value
    data = json.loads(json.dumps(data))  # a deep copy
    top = [f.name for f in fields(RunSpec)]
    _check_keys("", data, top, vocabulary.FOREIGN_NAMES)
    _coerce_types("", RunSpec, data, skip=(*SECTIONS, "options"))
    train = data.setdefault("train", {})
    if isinstance(train, dict) and isinstance(data.get("technique"), str):
        for k, v in TECHNIQUE_DEFAULTS.get(data["technique"], {}).items():
            train.setdefault(k, v)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"{key}: must be a [{key}] table", field=key)
            if base_dir is not None:
                for pkey in ("path",):
                    p = value.get(pkey)
                    if isinstance(p, str) and p and p != STDLIB and not p.startswith(("/", "~")) \
                            and (key != "model" or _exists(base_dir / p)) \
                            and not (key == "data" and value.get("format") == "hub"):  # a Hub id, not a path
                        value[pkey] = str((base_dir / p).resolve())
            kwargs[key] = _coerce(key, SECTIONS[key], value)
        elif key == "options":
            if not isinstance(value, dict):
                raise UserError("options: must be an [options] table", field="options")
            kwargs[key] = value
        else:
            kwargs[key] = value
    if "data" not in kwargs:
        kwargs["data"] = DataSpec(path=STDLIB)
    return RunSpec(**kwargs)


def load(path: str | Path, overrides: list[str] | None = None) -> RunSpec:
    """Read and validate a spec file; `overrides` are `section.key=value` strings applied first."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"spec file not found: {p}", field="spec")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid TOML: {e}", field="spec") from None
    for assignment in overrides or []:
        set_value(data, assignment)
    return from_dict(data, base_dir=p.parent.resolve())


def to_toml(spec: RunSpec) -> str:
    """The spec as commented TOML (each setting's help as a comment)."""
    lines = ["# llm-wizard run spec: `llm-wizard train <this file>` reruns it", ""]

    def emit(obj: Any) -> None:
        for f in fields(obj):
            if dataclasses.is_dataclass(getattr(obj, f.name)) or f.name == "options":
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            if f.metadata.get("quiet") and getattr(obj, f.name) == default:
                continue
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}  # {f.metadata.get('help', '')}")

    emit(spec)
    for name in SECTIONS:
        if (name, getattr(spec, name)) in (("distributed", DistributedSpec()), ("notify", NotifySpec())):
            continue  # left at their defaults: specs read as before
        lines += ["", f"[{name}]"]
        emit(getattr(spec, name))
    if spec.options:
        lines += ["", "[options]"] + [f"{_key_text(k)} = {_toml_value(v)}" for k, v in spec.options.items()]
    return "\n".join(lines) + "\n"


def help_for(dotted: str) -> str:
    """The help text of `section.field` (or a top-level field), for the TUI's hints."""
    parts = dotted.split(".")
    cls: type = RunSpec if len(parts) == 1 else SECTIONS[parts[0]]
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}[parts[-1]]
