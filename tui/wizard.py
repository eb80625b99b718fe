"""The wizard's choices and how they become a run spec and an estimate request: the headless model under
both the Textual app (tui/app.py) and `--plain` (tui/plain.py), which import it and never the reverse.

`Choices` is what the user has picked so far, shared by the Textual wizard and the `--plain`
prompts, so both write the same spec. Every setting holds the run spec's own names (engine/vocabulary.py),
which the estimator's request shares: what the wizard shows, estimates and writes is one value.
`spec_dict` writes `options` under the names the technique module reads (engine/techniques/*.py DEFAULTS). `preflight` runs the technique's own checks before a run folder exists, as `llm-wizard
train` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import vocabulary

TECHNIQUES = vocabulary.names(vocabulary.TECHNIQUES)
# A learning rate that suits each technique as a start (the book: fine-tuning uses a smaller LR);
# full/lora/qlora are engine.spec.TECHNIQUE_DEFAULTS' (a test keeps them equal).
DEFAULT_LR = {"scratch": 1e-3, "full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "prompt-tuning": 3e-2,
              "distill": 5e-5, "moe": 2e-5, "dpo": 5e-6, "orpo": 5e-6}
# The optimizer a technique starts with (engine.spec.TECHNIQUE_DEFAULTS: QLoRA's paper uses paged 8-bit AdamW).
DEFAULT_OPTIMIZER = {"qlora": "paged_adamw8bit"}


@dataclass
class Choices:
    technique: str = "scratch"
    name: str = ""  # empty: the technique's name
    model: str = ""  # Hub id or local folder (not scratch)
    arch: str = "gpt2"  # scratch
    size: str = "tiny"  # scratch
    tokenizer: str = "byte"  # scratch: byte (exact token count, no training) or bpe
    teacher: str = ""  # distill
    dataset: str = "stdlib"
    text_column: str = ""
    # The Data step's settings, the run spec's data section (engine.spec.DataSpec); empty or "auto": detected.
    data_format: str = "auto"
    messages_column: str = ""
    prompt_column: str = ""
    response_column: str = ""
    system_column: str = ""
    label_column: str = ""
    template: str = "auto"
    train_on: str = "assistant"
    slack_user: str = ""
    seq_len: int = 128
    batch_size: int = 8
    grad_accum: int = 1
    grad_checkpointing: bool = False
    precision: str = "fp32"  # engine.vocabulary.PRECISIONS the run trains: fp32, bf16 or fp16 (mixed)
    optimizer: str = ""  # engine.vocabulary.OPTIMIZERS the run trains; empty: the technique's
    compile: bool = False
    lr: float | None = None  # None: DEFAULT_LR for the technique
    schedule: str = "cosine"
    warmup_steps: int = 20
    max_steps: int = 500
    eval_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10  # steps between metrics events (each costs a device sync)
    lora_rank: int = 16
    finetuning: str = "lora"  # dpo/orpo: lora | qlora | full (engine/techniques/pairs.py); LoRA-DPO by default
    num_virtual_tokens: int = 8  # engine/techniques/prompt_tuning.py's default (the book's listing 5.3)
    num_processes: int = 1  # GPUs trained on, on each machine (through `accelerate launch` when above 1 in all)
    num_machines: int = 1  # machines, each running num_processes (the spec's num_processes is the total)
    main_process_ip: str = ""  # machine 0's address (several machines)
    main_process_port: int = 29500  # engine.spec.DistributedSpec's default (a test keeps them equal)
    strategy: str = "ddp"  # ddp | fsdp | zero2 | zero3 (engine.spec.STRATEGIES), used when num_processes > 1
    layout_chosen: bool = False  # the user set num_processes/strategy: the checks step proposes no other
    find_batch: str = "auto"  # train.find_batch: auto | on | off (engine/run/batch_finder.py)
    extra: dict[str, Any] = field(default_factory=dict)  # what the screens learned (params, tokens)

    def data_settings(self) -> dict[str, Any]:
        """The data settings chosen (not left at their default), under the spec's data section names."""
        chosen = {"format": self.data_format, "text_column": self.text_column,
                  "messages_column": self.messages_column, "prompt_column": self.prompt_column,
                  "response_column": self.response_column, "system_column": self.system_column,
                  "label_column": self.label_column, "template": self.template, "train_on": self.train_on,
                  "slack_user": self.slack_user}
        defaults = {"format": "auto", "template": "auto", "train_on": "assistant"}
        return {k: v for k, v in chosen.items() if v and v != defaults.get(k)}

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.technique]

    def optimizer_name(self) -> str:
        """The optimizer picked, else the technique's default."""
        return self.optimizer or DEFAULT_OPTIMIZER.get(self.technique, "adamw")

    def scratch_vocab(self) -> int:
        """The vocabulary a scratch model gets: 256 bytes + end-of-text, or the spec's BPE default."""
        return 257 if self.tokenizer == "byte" else 512

    def run_name(self) -> str:
        return self.name or self.technique

    def world(self) -> int:
        """Training processes in all: the GPUs chosen on each machine times the machines."""
        return self.num_processes * self.num_machines


def spec_dict(c: Choices, *, runs_dir: str | None = None) -> dict[str, Any]:
    """The run spec (engine.spec.from_dict's input) these choices describe."""
    if vocabulary.find(vocabulary.TECHNIQUES, c.technique).hosted:
        return _hosted_spec(c, runs_dir)
    scratch = c.technique == "scratch"
    model: dict[str, Any] = {"arch": c.arch, "size": c.size} if scratch else {"path": _absolute(c.model)}
    if not scratch:  # the model step's consents: running the model's pinned code, pickle weights
        model.update(c.extra.get("model_consent", {}))
    data: dict[str, Any] = {"path": _absolute(c.dataset) if c.dataset and c.dataset != "stdlib" else "stdlib"}
    if c.dataset != "stdlib":
        data.update(c.data_settings())
    if c.dataset and c.dataset != "stdlib" and not Path(c.dataset).expanduser().exists() and c.dataset.count("/") == 1:
        data["format"] = "hub"  # owner/name that is no local path: a dataset from the Hub cache
    options: dict[str, Any] = {}
    if c.technique in ("lora", "qlora"):
        options["lora_rank"] = c.lora_rank
    if c.technique == "prompt-tuning":
        options["num_virtual_tokens"] = c.num_virtual_tokens
    if c.technique == "distill":
        options["teacher"] = c.teacher
    if c.technique in vocabulary.PREFERENCE_TECHNIQUES and c.finetuning != "lora":
        options["finetuning"] = c.finetuning
    d: dict[str, Any] = {
        "technique": c.technique, "name": c.run_name(), "model": model, "data": data,
        "train": {"seq_len": c.seq_len, "batch_size": c.batch_size, "grad_accum": c.grad_accum,
                  "lr": c.learning_rate(), "schedule": c.schedule, "warmup_steps": min(c.warmup_steps, c.max_steps - 1),
                  "max_steps": c.max_steps, "optimizer": c.optimizer_name(),
                  "precision": c.precision, "gradient_checkpointing": c.grad_checkpointing,
                  "compile": c.compile, "find_batch": c.find_batch},
        "eval": {"every": min(c.eval_every, c.max_steps)},
        "checkpoint": {"every": min(c.checkpoint_every, c.max_steps)},
        "log": {"every": c.log_every},
    }
    if scratch and c.size == "tiny":
        # presets/tiny.toml's measurement: two tiny matrices per layer, more threads only add overhead
        d["train"]["threads"] = 1
    if scratch:
        d["tokenizer"] = {"kind": c.tokenizer}
    if c.world() > 1:
        d["distributed"] = {"num_processes": c.world(), "strategy": c.strategy}
        if c.num_machines > 1:
            d["distributed"].update(num_machines=c.num_machines, main_process_ip=c.main_process_ip,
                                    main_process_port=c.main_process_port)
    if runs_dir:
        d["runs_dir"] = runs_dir
    if options:
        d["options"] = options
    return d


def _hosted_spec(c: Choices, runs_dir: str | None) -> dict[str, Any]:
    """A hosted run's spec: the data and the service's options (the hosted step's), no local model or training
    settings (the service trains; engine/techniques/openai.py)."""
    data: dict[str, Any] = {"path": _absolute(c.dataset)}
    data.update(c.data_settings())
    options = {"model": c.model, **c.extra.get("hosted_options", {})} if c.model else \
        dict(c.extra.get("hosted_options", {}))
    d: dict[str, Any] = {"technique": c.technique, "name": c.run_name(), "data": data, "options": options}
    if runs_dir:
        d["runs_dir"] = runs_dir
    return d


def _absolute(path: str) -> str:
    """A local path made absolute (the job runs in its run folder); a Hub id stays as it is."""
    p = Path(path).expanduser()
    return str(p.resolve()) if path and p.exists() else path


def train_command(spec_path: str) -> str:
    return f"llm-wizard train {spec_path}"


def estimate_request(c: Choices, *, dataset: bool = False) -> Any:
    """The estimator's request for these choices (engine.estimate.memory.EstimateRequest)."""
    from engine.estimate.memory import EstimateRequest

    scratch = c.technique == "scratch"
    vocab = c.scratch_vocab() if scratch else None
    return EstimateRequest(
        model=None if scratch else c.model or None, arch=c.arch if scratch else None,
        size=c.size if scratch else None, vocab_size=vocab, technique=c.technique, finetuning=c.finetuning,
        teacher=c.teacher or None, lora_rank=c.lora_rank, num_virtual_tokens=c.num_virtual_tokens,
        precision=c.precision, optimizer=c.optimizer_name(), batch_size=c.batch_size, seq_len=c.seq_len,
        grad_accum=c.grad_accum, grad_checkpointing=c.grad_checkpointing,
        dataset=(c.dataset if dataset and c.dataset != "stdlib" else None),
        text_column=c.text_column or None, max_steps=c.max_steps,
        data_options=tuple((k, v) for k, v in c.data_settings().items() if k != "text_column"),
        gpus=c.world(), strategy=c.strategy if c.world() > 1 else "ddp",  # per-GPU numbers, sharded over all
    )


# A suggestion's changes (engine/estimate/suggest.py FIELDS: the spec's dotted names and values) -> the
# Choices attribute each sets.
CHOICE_FIELD = {"technique": "technique", "options.lora_rank": "lora_rank", "options.finetuning": "finetuning", "train.gradient_checkpointing": "grad_checkpointing",
                "train.optimizer": "optimizer", "train.precision": "precision", "train.batch_size": "batch_size",
                "train.grad_accum": "grad_accum", "train.seq_len": "seq_len",
                "distributed.num_processes": "num_processes", "distributed.strategy": "strategy"}


TRAINED = {"train.optimizer": vocabulary.OPTIMIZERS, "train.precision": vocabulary.PRECISIONS}


def apply_changes(c: Choices, changes: dict[str, Any], *, gpus: int, cuda: bool) -> str | None:
    """Apply an estimator suggestion's `changes`; None when applied, else why the wizard cannot make it
    here (more GPUs than this machine has, a strategy it cannot run, an optimizer the engine does not train),
    and then nothing is changed. A process count is the total over the machines, as the estimator's."""
    from engine.machine.strategies import strategy_unavailable

    changes = dict(changes)
    for key, value in changes.items():
        if key not in CHOICE_FIELD:
            return f"{key} is not a setting of the wizard"
        if key == "distributed.num_processes":
            if value % c.num_machines:
                return f"{value} processes do not split evenly over {c.num_machines} machines"
            each = f" on each of {c.num_machines} machines" if c.num_machines > 1 else ""
            if value // c.num_machines > gpus:
                return f"needs {value // c.num_machines} GPUs{each}; this machine has {gpus}"
        if key == "distributed.strategy" and (why := strategy_unavailable(value, cuda=cuda)):
            return f"{value}: {why}"
        if key in TRAINED and value not in vocabulary.names(TRAINED[key], trained=True):
            return f"the run engine does not train {value}"
    if "distributed.num_processes" in changes:
        changes["distributed.num_processes"] //= c.num_machines
    for key, value in changes.items():
        setattr(c, CHOICE_FIELD[key], value)
    if any(k.startswith("distributed.") for k in changes):
        c.layout_chosen = True
    return None


def apply_proposal(c: Choices, proposal: Any) -> None:
    """Take engine.estimate.layout.propose's layout unless the user chose one."""
    if not c.layout_chosen:
        c.num_processes, c.strategy = proposal.num_processes, proposal.strategy


def settle(c: Choices) -> str | None:
    """Put right a combination the run spec refuses, saying what changed: the batch finder runs in one
    process only (engine.spec), so `on` becomes `auto` with several."""
    if c.world() > 1 and c.find_batch == "on":
        c.find_batch = "auto"
        return "batch finder: on needs one process; set to auto"
    return None


def preflight(spec: Any) -> None:
    """The checks before launch, as `llm-wizard train` makes them (UserError with the message to show): the
    data (engine.data.prepare.check: files, layout, the first rows), the technique's `preflight` (options, the
    model found, QLoRA's 4-bit support, distillation's tokenizers), else its option validation (prompt-tuning,
    moe), then what several processes cannot do."""
    from engine.data.prepare import check
    from engine.data.sources import DataSource
    from engine.run.distributed import launch as launch_config
    from engine.techniques.base import get

    check(DataSource.from_spec(spec.data))

    technique = get(spec.technique)
    check = getattr(technique, "preflight", None) or getattr(technique, "options", None)
    if check is not None:
        check(spec)
    launch_config.check_supported(spec)
