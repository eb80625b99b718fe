"""The names of a run's settings, said once: techniques, precisions, optimizers, strategies, scratch shapes.

The run spec validates against these, the estimator takes them as its request's values, and the wizard
offers them: so a value the estimator suggests is one that `llm-wizard train --set` accepts. A name the
estimator can count but the run engine does not train (`trains=False`: Adafactor) is offered by
`llm-wizard estimate` only, never suggested and never written into a spec. Nothing but engine.errors is
imported here (the base layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UserError


@dataclass(frozen=True)
class Name:
    """One value of a setting, with the line the wizard and the CLI show beside it."""

    name: str
    help: str
    trains: bool = True  # False: the estimator knows it; the run engine does not train it
    hosted: bool = False  # True: trained on a service's machines (nothing to estimate here)


@dataclass(frozen=True)
class Precision(Name):
    weights: str = "fp32"  # the dtype of trainable weights, their gradients and optimizer states
    compute: str = "fp32"  # the dtype matmuls run in (autocast's, under mixed precision)

    @property
    def mixed(self) -> bool:
        """16-bit compute over fp32 weights: autocast keeps a 16-bit copy of each Linear weight."""
        return self.weights != self.compute

    @property
    def autocast(self) -> str:
        """accelerate's `mixed_precision` for it: the compute dtype under mixed precision, else "no"."""
        return self.compute if self.mixed else "no"


TECHNIQUES: tuple[Name, ...] = (
    Name("scratch", "a new model from a config, random weights, tokenizer trained on your data"),
    Name("full", "fine-tune every weight of a pretrained model"),
    Name("lora", "small low-rank adapters on a frozen model"),
    Name("qlora", "LoRA adapters on a 4-bit (NF4) frozen model"),
    Name("prompt-tuning", "only a few virtual token embeddings train"),
    Name("distill", "a student learns from a teacher's outputs"),
    Name("moe", "fine-tune a mixture-of-experts model"),
    Name("dpo", "preference tuning: learn to prefer the chosen answer over the rejected one (DPO)"),
    Name("orpo", "preference tuning without a reference model: SFT on the chosen answer + an odds-ratio term"),
    Name("openai", "hosted fine-tuning through the OpenAI API: the data leaves this machine; billed per token",
         hosted=True),
)
PREFERENCE_TECHNIQUES = ("dpo", "orpo")  # they read preference pairs (data.format auto -> preference)
PRECISIONS: tuple[Precision, ...] = (
    Precision("fp32", "32-bit weights and compute: the most memory, no surprises", compute="fp32"),
    Precision("bf16", "mixed precision: bf16 compute under autocast over fp32 weights and optimizer states",
              compute="bf16"),
    Precision("fp16", "mixed precision: fp16 compute over fp32 weights, with loss scaling (needs a GPU)",
              compute="fp16"),
    # Pure bf16 trades accuracy for memory: AdamW's update is added to a bf16 weight (8 bits of mantissa),
    # so an update under about 1/256 of the weight rounds away. Said in the help, so nobody picks it blind.
    Precision("bf16-pure", "pure bf16: weights, gradients and AdamW states all bf16, no fp32 copy (half the "
                           "memory of fp32 weights + fp32 Adam); updates under about 1/256 of a weight are lost "
                           "to bf16 rounding: fine for short fine-tuning, mixed bf16 is the safer default",
              weights="bf16", compute="bf16"),
)
OPTIMIZERS: tuple[Name, ...] = (
    Name("adamw", "AdamW: two fp32 states a parameter (8 bytes)"),
    Name("adamw8bit", "8-bit AdamW (bitsandbytes): about 2 bytes of state a parameter"),
    Name("paged_adamw8bit", "8-bit AdamW whose states page to CPU memory under pressure (QLoRA's default)"),
    Name("sgd", "SGD with momentum: one state a parameter"),
    Name("adafactor", "estimate only: a factored second moment (the run engine does not train it)", trains=False),
)
STRATEGIES: tuple[Name, ...] = (
    Name("ddp", "a full copy per GPU (fastest while it fits)"),
    Name("fsdp", "weights, gradients and optimizer states sharded over the GPUs (FSDP2)"),
    Name("zero2", "gradients and optimizer states sharded (DeepSpeed ZeRO-2)"),
    Name("zero3", "weights, gradients and optimizer states sharded (DeepSpeed ZeRO-3)"),
)
ARCHS: tuple[Name, ...] = (
    Name("gpt2", "GPT-2 style: learned positions, GELU MLP, tied embeddings"),
    Name("llama", "Llama style: rotary positions, SwiGLU MLP, RMSNorm"),
)
SIZES = ("tiny", "10M", "125M", "350M", "1B", "7B")  # engine/models/architectures.py gives each its shape
SCHEDULES = ("cosine", "linear", "constant")
TOKENIZERS = ("bpe", "byte", "char")
FIND_BATCH = ("auto", "on", "off")  # train.find_batch: the preflight batch finder (engine/run/batch_finder.py)
STDLIB = "stdlib"  # data.path value: Python's own standard library source, present on every machine
# data.format: the layout of the examples (engine/data/formats.py); the container comes from the path.
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_response", "text", "chosen", "preference", "slack",
                "hub")
FORMER_DATA_FORMATS = {"jsonl": "auto", "csv": "auto", "parquet": "auto"}  # containers, found from the path now
# data.template: the model's own, or a named layout (engine/data/chat_templates.py writes each).
CHAT_TEMPLATES = ("auto", "plain", "chatml", "llama-3", "gemma", "alpaca", "vicuna", "zephyr", "mistral")
TRAIN_ON = ("assistant", "last_assistant", "all")  # data.train_on: which tokens of a conversation carry the loss
ON_BAD_ROW = ("error", "skip")

# Names people bring from HF TrainingArguments and other tools, for the spec's "did you mean" hint.
FOREIGN_NAMES = {"learning_rate": "lr", "scheduler": "schedule", "lr_scheduler_type": "schedule",
                 "steps": "max_steps", "gradient_accumulation_steps": "grad_accum",
                 "per_device_train_batch_size": "batch_size", "warmup": "warmup_steps", "max_length": "seq_len",
                 "block_size": "seq_len", "context_length": "seq_len", "num_train_epochs": "epochs",
                 "max_grad_norm": "grad_clip", "save_steps": "every", "eval_steps": "every"}

# The estimator's older names, read as the run spec's (scripts written for `estimate` keep working).
# `bf16` meant pure bf16 there; it is the spec's mixed bf16 now, and pure bf16 is `bf16-pure`.
FORMER_NAMES = {"mixed-bf16": "bf16", "mixed-fp16": "fp16", "adamw-8bit": "adamw8bit",
                "paged-adamw-8bit": "paged_adamw8bit"}


def names(values: tuple[Name, ...], *, trained: bool = False) -> tuple[str, ...]:
    """The names of a setting's values; `trained`: only those the run engine trains."""
    return tuple(v.name for v in values if v.trains or not trained)


def find(values: tuple[Name, ...], name: str) -> Name:
    for v in values:
        if v.name == name:
            return v
    raise UserError(f"unknown value {name!r}: choose one of {', '.join(names(values))}", field="value")


def precision(name: str) -> Precision:
    p = find(PRECISIONS, name)
    assert isinstance(p, Precision)
    return p


def help_of(values: tuple[Name, ...], name: str) -> str:
    return find(values, name).help

# what final/ holds (checkpoint.final), the optional trackers (log.trackers), the alert levels notify.severity takes
FINAL_CHOICES = ("last", "best")
TRACKERS = ("wandb", "mlflow", "trackio")
NOTIFY_SEVERITIES = ("error", "warning", "info", "none")

# The learning rates a run accepts, in the spec and from a live command (`control lr`, rescue, the dashboard): no
# optimizer here learns at 10 or above, and below 1e-10 a step changes nothing an fp32 weight can hold.
LR_RANGE = (1e-10, 10.0)


def lr_problem(lr: float, what: str = "the learning rate") -> str | None:
    """Why `lr` is no learning rate a run takes (with the allowed range), or None when it is one."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        return f"not a learning rate: {lr!r}"
    low, high = LR_RANGE
    return None if low <= lr <= high else f"{what} would be {lr:.3g}: it must be from {low:g} to {high:g}"
