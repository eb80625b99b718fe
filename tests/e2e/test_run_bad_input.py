"""Bad input: one clear line, exit 2, and nothing a later run would take for a checkpoint
(RELIABILITY D6, M7, R8, L5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import spec

from engine.checkpoints import store as checkpoint
from run_helpers import tiny_spec
from tui.cli import main


def _spec_file(tmp_path: Path, data: Path, **sections: dict) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(spec.to_toml(tiny_spec(data, **sections)))
    return path


def _no_checkpoint_like_leftovers() -> None:
    runs = Path(os.environ["LLM_WIZARD_RUNS"])
    if runs.exists():
        found = [p for p in runs.rglob("*") if p.name.startswith(("step-", ".tmp")) or p.name == "final"]
        assert not found, found
        for run in runs.iterdir():
            assert checkpoint.find_resume(run) is None


@pytest.mark.parametrize(("content", "words"), [
    (b"", "file is empty"),
    (b"abc\x00\x01\x02def", "NUL byte"),
    ("café au lait\n".encode("latin-1"), "not UTF-8"),
])
def test_bad_data_file_exits_2_before_any_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes,
                                                     words: str) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    assert main(["train", str(_spec_file(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and words in err and "data.txt" in err and "Traceback" not in err
    assert not Path(os.environ["LLM_WIZARD_RUNS"]).exists()


@pytest.mark.parametrize(("text", "words"), [
    ("[train]\nbatch_size = 0\n", "train.batch_size: must be positive"),
    ("[train]\nlearning_rate = 0.1\n", "did you mean"),
    ("technique = 'magic'\n", "technique: unknown value 'magic'"),
    ("[data]\npath = 'missing.txt'\n", "data.path: file or folder not found"),
    ("seed = -1\n", "seed: must be a whole number from 0 to 4294967295"),  # M10: ranges said at load
    ("seed = 2024-01-01\n", "seed: a date or time (2024-01-01) is not a setting's value"),
    ("[options]\nlora_rank = 4\n", "options.lora_rank: unknown for scratch; scratch takes no options"),  # M9
])
def test_wrong_spec_field_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture, text: str,
                                            words: str) -> None:
    (tmp_path / "spec.toml").write_text(text)
    assert main(["train", str(tmp_path / "spec.toml")]) == 2
    assert words in capsys.readouterr().err
    _no_checkpoint_like_leftovers()


def test_controls_and_resume_of_unknown_or_dead_runs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["control", "nope", "pause"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["train", "--resume", "nope"]) == 2
    assert main(["train"]) == 2


@pytest.mark.slow
def test_data_shorter_than_one_sequence_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "short.txt"
    data.write_text("too short\n")
    assert main(["train", str(_spec_file(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "need at least" in err and "seq_len" in err and "Traceback" not in err
    _no_checkpoint_like_leftovers()
    (run,) = Path(os.environ["LLM_WIZARD_RUNS"]).iterdir()
    assert main(["runs", "--json"]) == 0
    assert '"state": "failed"' in capsys.readouterr().out
    assert main(["control", run.name, "pause"]) == 2  # not running: refused without waiting
    assert "not running" in capsys.readouterr().err
    assert main(["train", "--resume", run.name]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err

