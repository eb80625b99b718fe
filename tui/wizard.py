"""The wizard's choices, and `open_wizard` (what plain `llm-wizard` runs).

`Choices` is what the user has picked so far, shared by the Textual wizard and the `--plain`
prompts, so both write the same run spec.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

TECHNIQUES = ("scratch", "full", "lora", "qlora", "prompt-tuning", "distill", "moe")


@dataclass
class Choices:
    technique: str = "scratch"
    model: str = ""  # Hub id or local folder (not scratch)
    arch: str = "gpt2"  # scratch
    size: str = "tiny"  # scratch
    teacher: str = ""  # distill
    dataset: str = ""
    text_column: str = ""
    seq_len: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    grad_checkpointing: bool = False
    precision: str = "fp32"
    optimizer: str = "adamw"
    compile: bool = False
    preload: bool = True
    lr: float = 3e-4
    schedule: str = "cosine"
    warmup_steps: int = 10
    max_steps: int = 1000
    lora_rank: int = 16
    num_virtual_tokens: int = 20
    extra: dict[str, object] = field(default_factory=dict)


def open_wizard(args: argparse.Namespace) -> int:
    runs = getattr(args, "runs_dir", None)
    if getattr(args, "plain", False):
        from tui.plain import run_plain

        return run_plain(runs_dir=runs)
    from tui.app import make_app

    result = make_app(runs_dir=runs).run()
    return int(result or 0)
