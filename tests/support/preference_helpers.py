"""Preference pairs for the dpo/orpo tests: a tiny Qwen2 chat model (chat_helpers) and pairs in the layouts
people bring, whose preference is quickly learnable: the chosen answer agrees ("yes" and the prompt's number
word), the rejected one refuses ("no" and another)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chat_helpers import qwen2_model, train_bpe, write_jsonl

NUMBERS = "one two three four five six seven eight nine ten".split()


def pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` rows {prompt, chosen, rejected} (strings)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(NUMBERS, 2)
        rows.append({"prompt": f"Say {a}.", "chosen": f"yes {a}", "rejected": f"no {b}"})
    return rows


def conversational(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """TRL's conversational layout of the same pairs."""
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def llama_factory(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """LLaMA-Factory's ShareGPT preference layout of the same pairs."""
    return [{"conversations": [{"from": "human", "value": r["prompt"]}],
             "chosen": {"from": "gpt", "value": r["chosen"]},
             "rejected": {"from": "gpt", "value": r["rejected"]}} for r in rows]


def preference_setup(root: Path, n: int = 64) -> tuple[Path, Path]:
    """(a tiny chat model folder, a JSONL file of `n` pairs)."""
    model = qwen2_model(root / "model", train_bpe(root / "tok"))
    data = write_jsonl(root / "pairs.jsonl", pairs(n))
    return model, data


def preference_spec(technique: str, model: Path, data: Path, **sections: Any) -> Any:
    from engine import spec

    d: dict[str, Any] = {
        "technique": technique, "name": technique, "model": {"path": str(model)},
        "data": {"path": str(data), "val_fraction": 0.1},
        "train": {"seq_len": 64, "batch_size": 4, "max_steps": 12, "lr": 1e-3, "threads": 1, "schedule": "constant",
                  "warmup_steps": 0},
        "eval": {"every": 0}, "checkpoint": {"every": 6, "keep": 4}, "log": {"every": 1}}
    for key, value in sections.items():
        d[key] = {**d.get(key, {}), **value} if isinstance(value, dict) else value
    return spec.from_dict(d)
