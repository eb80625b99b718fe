"""Fine-tuning on conversations end to end: an instruct model trained through its own chat template, a base
model given a named one (its new special tokens added, their rows trained, also under LoRA), and the same
token counts from `estimate`, `llm-wizard data` and the trainer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import spec
from engine.run import job
from engine.run.trainer import Trainer
from engine.serve.generate import generate, trained_on_chat
from chat_helpers import many, qwen2_model, train_bpe, write_jsonl
from run_helpers import events, losses_by_step


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("chat")
    instruct = qwen2_model(root / "instruct", train_bpe(root / "tok"))
    base = qwen2_model(root / "base", train_bpe(root / "base-tok", special=("<|endoftext|>",), template=None))
    data = write_jsonl(root / "chat.jsonl", [{"messages": c} for c in many(160)])
    return SimpleNamespace(root=root, instruct=instruct, base=base, data=data)


def chat_spec(technique: str, model: Path, data: Path, **data_settings: object) -> spec.RunSpec:
    return spec.from_dict({
        "technique": technique, "name": technique, "model": {"path": str(model)},
        "data": {"path": str(data), "val_fraction": 0.1, **data_settings},
        "train": {"seq_len": 160, "batch_size": 4, "max_steps": 12, "lr": 3e-3, "threads": 1, "schedule": "constant"},
        "eval": {"every": 0}, "checkpoint": {"every": 6, "keep": 2}, "log": {"every": 1}})


def model_ready(run: Path) -> dict:
    return next(e for e in events(run, "state") if e.get("message") == "model ready")


def test_full_fine_tune_through_the_models_template_counts_the_same_everywhere(chat, tmp_path: Path) -> None:
    from engine.data.sources import DataSource
    from engine.estimate.data_size import check_data, load_tokenizer, report

    s = chat_spec("full", chat.instruct, chat.data)
    source = DataSource.from_spec(s.data)
    data_report = report(source, load_tokenizer(str(chat.instruct)), s.train.seq_len, val_fraction=0.1)
    estimate = check_data(str(chat.data), technique="full", params=10_000, model=str(chat.instruct),
                          tokens_per_step=640, source=source, seq_len=s.train.seq_len, val_fraction=0.1)
    run = job.create(s, tmp_path / "runs")
    trainer = Trainer(run, s)
    assert trainer.run_job() == 0
    trained = model_ready(run)["data"]
    assert trained["format"] == "messages" and trained["template"] == "model"
    assert trained["tokens"] == data_report.tokens == estimate.tokens  # one count, three entry points
    assert trained["trained_tokens"] == data_report.trained_tokens > 0
    assert (trained["examples"], trained["dropped"]) == (data_report.examples, data_report.dropped)
    losses = list(losses_by_step(events(run)).values())
    assert losses[-1] < losses[0], losses
    assert trained_on_chat(run)
    text, source_name = generate(run, "Name a prime number.", max_new_tokens=5, temperature=0)
    assert source_name == "final" and isinstance(text, str)
    saved = json.loads((run / "final" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in (saved.get("chat_template") or (run / "final" / "chat_template.jinja").read_text())


@pytest.mark.parametrize("technique", ["lora", "full"])
def test_a_base_model_given_chatml_trains_its_new_tokens(chat, tmp_path: Path, technique: str) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    s = chat_spec(technique, chat.base, chat.data, template="chatml")
    run = job.create(s, tmp_path / "runs")
    trainer = Trainer(run, s)
    assert trainer.run_job() == 0
    trained = model_ready(run)["data"]
    assert trained["template"] == "chatml" and trained["added_tokens"] == ["<|im_start|>", "<|im_end|>"]
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == len(tokenizer) - 1 and "<|im_start|>" in tokenizer.chat_template
    model = trainer.prep.model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert inner.get_input_embeddings().weight.shape[0] == len(tokenizer)
    if technique == "lora":  # peft's trainable tokens: the new rows are trained, the rest of the embedding frozen
        state = load_file(str(run / "final" / "adapter_model.safetensors"))
        token_keys = [k for k in state if "trainable_tokens" in k]
        assert token_keys and all(state[k].shape[0] == 2 for k in token_keys), list(state)
    text, _ = generate(run, "Name a prime number.", max_new_tokens=4, temperature=0)
    assert isinstance(text, str)
