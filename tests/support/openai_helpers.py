"""Shared pieces of the hosted fine-tuning tests: chat data, an openai spec, the environment that points the
official client at tests/support/openai_server.py, and the canary check that the key reached no file."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from engine import spec


def chat_file(folder: Path, n: int = 30, layout: str = "alpaca") -> Path:
    """`n` examples in `layout` (alpaca rows, or OpenAI messages with an untrained first reply)."""
    path = folder / f"{layout}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if layout == "alpaca":
                row: dict[str, Any] = {"instruction": f"Say the number {i}.", "output": f"The number is {i}."}
            else:
                row = {"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": f"Count to {i}?"},
                                    {"role": "assistant", "content": "Sure.", "weight": 0},
                                    {"role": "user", "content": "Go on."},
                                    {"role": "assistant", "content": " ".join(map(str, range(i + 1)))}]}
            f.write(json.dumps(row) + "\n")
    return path


def openai_spec(data: Path, **options: Any) -> spec.RunSpec:
    return spec.from_dict({"technique": "openai", "name": "hosted", "data": {"path": str(data), "val_fraction": 0.2},
                           "options": {"suffix": "test", "n_epochs": 2, **options}})


def canary_key() -> str:
    return f"sk-canary-{secrets.token_hex(16)}"


def use_server(monkeypatch: Any, base_url: str, key: str, poll_s: float = 0.05) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("LLMW_REMOTE_POLL_S", str(poll_s))


def files_holding(run: Path, secret: str) -> list[str]:
    """Every file of the run folder (job.log, hidden files and final/ included) whose bytes hold `secret`."""
    needle = secret.encode()
    return [str(p.relative_to(run)) for p in sorted(run.rglob("*")) if p.is_file() and needle in p.read_bytes()]
