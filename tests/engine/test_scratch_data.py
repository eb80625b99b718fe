"""Scratch reads a table through the one data path (RELIABILITY D12): its layout and columns honoured, a bad
row named file:line, the tokenizer trained on the examples as rendered (not on the JSON), [options] refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import spec
from engine.errors import UserError
from engine.techniques import scratch
from engine.techniques.base import SetupContext

ROWS = [{"instruction": f"say {w}", "output": f"{w} {w} {w}."} for w in ("red", "green", "blue", "gold") * 10]


def table_spec(path: Path, **sections: dict) -> spec.RunSpec:
    base = {"name": "t", "technique": "scratch", "data": {"path": str(path), "val_fraction": 0.1},
            "tokenizer": {"kind": "char", "vocab_size": 64},
            "model": {"arch": "gpt2", "size": "tiny", "layers": 1, "width": 32, "heads": 2},
            "train": {"seq_len": 64, "batch_size": 4, "lr": 3e-3, "max_steps": 3, "warmup_steps": 0, "threads": 1},
            "eval": {"every": 0}, "checkpoint": {"every": 0, "keep": 2}, "log": {"every": 1}}
    for key, value in sections.items():
        base[key] = {**base[key], **value}
    return spec.from_dict(base)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_broken_row_is_named_by_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in ROWS]
    lines[29] = '{"instruction": "say red", "output": '  # line 30 cut short
    s = table_spec(write(tmp_path / "d.jsonl", lines))
    with pytest.raises(UserError, match=r"d\.jsonl:30"):
        scratch.setup(SetupContext(s, tmp_path))


def test_the_rows_train_in_their_layout_and_the_tokenizer_learns_the_rendered_text(tmp_path: Path) -> None:
    from engine.run import job
    from engine.run.trainer import Trainer

    s = table_spec(write(tmp_path / "d.jsonl", [json.dumps(r) for r in ROWS]))
    prep = scratch.setup(SetupContext(s, tmp_path))
    vocab = prep.tokenizer.get_vocab()
    assert "{" not in vocab and '"' not in vocab, "trained on the file's JSON, not the rows"
    assert "#" in vocab and "P" in vocab  # the plain layout's "### Prompt:" as rendered
    assert prep.data.report.format == "alpaca" and prep.data.report.trained_tokens < prep.data.report.tokens
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    from engine.runfolder.folder import read_events

    metrics = [e for e in read_events(run)[0] if e["type"] == "metrics"]  # N7: the grad norm of every step
    assert [e["step"] for e in metrics] == [1, 2, 3] and all(e["train/grad_norm"] > 0 for e in metrics), metrics


def test_columns_that_name_nothing_are_refused(tmp_path: Path) -> None:
    s = table_spec(write(tmp_path / "d.jsonl", [json.dumps(r) for r in ROWS]),
                   data={"prompt_column": "question", "response_column": "answer"})
    with pytest.raises(UserError, match="question"):
        scratch.setup(SetupContext(s, tmp_path))


@pytest.mark.parametrize("technique", ["scratch", "full", "lora", "qlora", "prompt-tuning", "distill", "moe", "dpo",
                                       "orpo", "openai"])
def test_every_technique_refuses_an_unknown_option_with_the_valid_ones(technique: str) -> None:
    from engine.techniques.base import get

    s = spec.from_dict({"technique": technique, "options": {"lora_rnak": 4}})
    with pytest.raises(UserError) as info:
        get(technique).preflight(s)
    message = str(info.value)
    assert info.value.field == "options.lora_rnak" and "unknown for" in message, message
    assert "known: " in message or "takes no options" in message, message
    if technique in ("lora", "qlora", "dpo", "orpo"):
        assert "did you mean 'lora_rank'?" in message
