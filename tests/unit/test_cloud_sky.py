"""The SkyPilot task `llm-wizard cloud create --provider sky` writes is accepted by SkyPilot's own loader
(sky.Task.from_yaml): the GPUs, the spec and its data mounted, the run folder on a bucket, a preempted run resumed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloud_helpers import PRESETS

from tui.cli import main

# skypilot is in the test extra (0.9.2: the newest that leaves click>=8.4.2 alone, see pyproject's `cloud` extra)
sky = pytest.importorskip("sky", reason="skypilot is not installed (pip install 'llm-wizard[cloud]')")


def test_task_yaml_loads_in_skypilot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # SkyPilot keeps its state under ~/.sky
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "corpus.txt").write_text("hello\n" * 20)
    spec = tmp_path / "spec.toml"
    spec.write_text((PRESETS / "tiny.toml").read_text().replace('path = "stdlib"', f'path = "{tmp_path / "corpus.txt"}"'))
    assert main(["cloud", "create", str(spec), "--provider", "sky", "--gpu", "l4", "--count", "2", "--spot",
                 "--managed", "--repo", "https://example.com/llm-wizard.git", "--dry-run"]) == 0
    out = capsys.readouterr().out
    head, _, rest = out.partition(":\n")
    text, _, command = rest.rpartition("\n\n")
    path = Path(head.removeprefix("# "))
    assert command.strip().startswith(f"sky jobs launch -n llmw-spec {path}")
    task_file = tmp_path / "task.yaml"
    task_file.write_text(text)
    task = sky.Task.from_yaml(str(task_file))
    (res,) = task.resources
    assert res.accelerators == {"L4": 2} and res.use_spot
    assert task.file_mounts[f"~/llm-wizard-work/spec.toml"] == str(spec)
    assert task.file_mounts["~/llm-wizard-work/data/corpus.txt"] == str(tmp_path / "corpus.txt")
    runs = task.storage_mounts["/llm-wizard-runs"]
    assert runs.name == "llm-wizard-llmw-spec" and runs.mode == sky.StorageMode.MOUNT_CACHED
    assert "train --resume latest" in task.run and '--set "data.path=$HOME/llm-wizard-work/data/corpus.txt"' in task.run
    assert "make -C ~/llm-wizard setup" in task.setup
    assert yaml.safe_load(text)["resources"]["disk_size"] == 200
