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

# `make test` runs the suite in two pytest-xdist workers: each keeps torch to one intra-op thread in its own
# process (two workers on two cores; the jobs the tests start set their own threads from their spec).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("llmw")
    monkeypatch.setenv("LLM_WIZARD_RUNS", str(base / "runs"))
    monkeypatch.setenv("LLM_WIZARD_CACHE", str(base / "cache"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.delenv("LLM_WIZARD_FAKE_GPUS", raising=False)
    if XDIST_WORKER and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


# Under `make test` these files run one after another in one worker: those whose tests start two ranks
# (accelerate launch, mp.spawn), and those that SIGKILL a job at random moments and need it to have made
# progress by then. Beside them runs at most one other test, never a second two-process run.
SERIAL = {"test_distributed_numerics.py", "test_distributed_runs.py", "test_preference_distributed.py",
          "test_sharded_checkpoint.py", "test_sharded_runs.py", "test_zero_runs.py",
          "test_reliability_kill.py", "test_reliability_techniques.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """xdist's loadgroup hands out whole groups: each file is one (its module fixtures are built once), the
    SERIAL files together are one."""
    if not getattr(config.option, "loadgroup", False):  # set by xdist for --dist loadgroup
        return
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            group = "serial" if item.path.name in SERIAL else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))
