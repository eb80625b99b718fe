"""Every test runs offline, with its own runs and cache folders, and never sees a real GPU setting."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite starts a few hundred Python processes (jobs, the CLI, accelerate launches): with bytecode caching
# off (PYTHONDONTWRITEBYTECODE, set on some machines) each one compiles the project's modules it imports again.
# Cached in __pycache__ (git-ignored) they compile once, as on a user's machine.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("llmw")
    monkeypatch.setenv("LLM_WIZARD_RUNS", str(base / "runs"))
    monkeypatch.setenv("LLM_WIZARD_CACHE", str(base / "cache"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.delenv("LLM_WIZARD_FAKE_GPUS", raising=False)
