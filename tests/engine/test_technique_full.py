"""Full fine-tune on a tiny "pretrained" GPT-2 built here: the loss falls, every weight moves, the final
model loads with transformers and generates; the default LR is below scratch's; bad model input is a
clear error; the tiny preset runs when pointed at a local model (RELIABILITY M1 for models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import spec

from engine.run import job
from engine.serve.generate import generate
from engine.run.trainer import Trainer
from finetune_helpers import base_model, corpus_and_tokenizer, finetune_spec, tensors
from run_helpers import WORDS, events, losses_by_step

pytestmark = pytest.mark.slow
PRESETS = Path(__file__).parents[2] / "presets"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    import torch

    threads = torch.get_num_threads()  # specs set threads = 1 in this (pytest's) process: put it back after
    tmp = tmp_path_factory.mktemp("full")
    corpus, tokenizer = corpus_and_tokenizer(tmp)
    yield corpus, base_model("gpt2", tokenizer, tmp / "base")
    torch.set_num_threads(threads)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_full_finetune_trains_every_weight_and_the_final_model_generates(base, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus, model_dir = base
    s = finetune_spec("full", model_dir, corpus, train={"lr": 3e-3})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    losses = list(losses_by_step(events(run)).values())
    assert len(losses) == 30 and _mean(losses[-5:]) < _mean(losses[:5]) - 1.0, losses

    before, after = tensors(model_dir / "model.safetensors"), tensors(run / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged  # every tensor trained (the position table in its first seq_len rows)
    assert (run / "checkpoints" / "step-000010" / "model.safetensors").is_file()

    # final/: a plain transformers model with the base's own tokenizer (nothing added or resized)
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(model_dir).get_vocab()
    assert model.config.vocab_size == before["transformer.wte.weight"].shape[0]
    text, source = generate(run, "the cat", max_new_tokens=8, temperature=0)
    assert source == "final" and any(w in text.split() for w in WORDS), text  # it learned the corpus's words
    text, source = generate(run, "the cat", checkpoint_ref="10", max_new_tokens=4)
    assert source == "step-000010" and text


def test_full_starts_from_a_lower_learning_rate_than_scratch(base) -> None:
    corpus, model_dir = base
    d = {"model": {"path": str(model_dir)}, "data": {"path": str(corpus)}}
    scratch = spec.from_dict({**d, "technique": "scratch"}).train.lr
    full = spec.from_dict({**d, "technique": "full"}).train.lr
    assert full == 2e-5 and full < scratch / 10
    assert spec.from_dict({**d, "technique": "full", "train": {"lr": 1e-4}}).train.lr == 1e-4  # given: kept


def _error(run: Path) -> str:
    return [e for e in events(run, "error")][-1]["message"]


def test_bad_model_input_is_a_clear_error(base, tmp_path: Path, capsys) -> None:
    from tui.cli import main

    corpus, model_dir = base
    missing = finetune_spec("full", "someone/not-cached-model", corpus)  # type: ignore[arg-type]
    spec_file = tmp_path / "missing.toml"
    spec_file.write_text(spec.to_toml(missing))
    assert main(["train", str(spec_file), "--runs-dir", str(tmp_path / "refused")]) == 2  # before launch
    assert "someone/not-cached-model" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    run = job.create(missing, tmp_path / "runs")  # launched some other way: the job says the same
    assert Trainer(run, missing).run_job() == 2
    assert "someone/not-cached-model" in _error(run) and "model.path" in _error(run)

    too_long = finetune_spec("full", model_dir, corpus, train={"seq_len": 512})
    run = job.create(too_long, tmp_path / "runs")
    assert Trainer(run, too_long).run_job() == 2
    assert "seq_len 512 exceeds the model's 128 positions" in _error(run)

    from transformers import AutoTokenizer  # M8: a tokenizer with more tokens than the model has embedding rows

    bigger = AutoTokenizer.from_pretrained(model_dir)
    bigger.add_tokens([f"<extra{i}>" for i in range(1000)])
    bigger.save_pretrained(tmp_path / "bigger")
    mismatched = finetune_spec("full", model_dir, corpus, tokenizer={"path": str(tmp_path / "bigger")})
    run = job.create(mismatched, tmp_path / "runs")
    assert Trainer(run, mismatched).run_job() == 2
    assert "embedding only" in _error(run) and "do not belong together" in _error(run)


def test_tiny_preset_runs_on_a_local_model(base, tmp_path: Path) -> None:
    corpus, model_dir = base
    s = spec.load(PRESETS / "full-tiny.toml", [f"model.path={model_dir}", f"data.path={corpus}", "train.max_steps=4",
                                               "eval.every=2", "checkpoint.every=2", "train.warmup_steps=1"])
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    assert [e["type"] for e in events(run)][-1] == "done" and (run / "final" / "model.safetensors").is_file()
    assert events(run, "eval")
