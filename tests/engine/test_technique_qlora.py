"""QLoRA on a tiny "pretrained" Llama built here, quantized to NF4 by bitsandbytes on the CPU (0.50 runs
4-bit layers and 8-bit AdamW there): the base is NF4 with double quantization and bf16 compute and stays
bit-identical, the optimizer is paged 8-bit AdamW, the loss falls, the adapter alone is saved and loads
on the base and generates; where 4-bit cannot run, `llm-wizard train` refuses before launch and offers LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import spec

from engine.run import job
from engine.serve.generate import generate
from engine.techniques import lora, qlora
from engine.run.trainer import Trainer
from finetune_helpers import base_model, corpus_and_tokenizer, finetune_spec, tensors
from run_helpers import events, losses_by_step

pytestmark = pytest.mark.slow
PRESETS = Path(__file__).parents[2] / "presets"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    import torch

    threads = torch.get_num_threads()  # specs set threads = 1 in this (pytest's) process: put it back after
    tmp = tmp_path_factory.mktemp("qlora")
    corpus, tokenizer = corpus_and_tokenizer(tmp)
    yield corpus, base_model("llama", tokenizer, tmp / "base")
    torch.set_num_threads(threads)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _four_bit(model) -> dict[str, tuple]:
    """Every NF4 layer of a model: (packed weight bytes, quant state) by module name (peft's prefix removed)."""
    import bitsandbytes as bnb

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            out[key] = (m.weight.data.clone(), m.weight.quant_state)
    return out


def test_bitsandbytes_runs_4bit_on_this_machine() -> None:
    assert qlora.check_support() is None  # DESIGN.md: bitsandbytes 0.50 runs NF4 on this CPU


def test_qlora_trains_an_adapter_on_a_frozen_nf4_base(base, tmp_path: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    corpus, model_dir = base
    s = finetune_spec("qlora", model_dir, corpus, train={"lr": 1e-2})
    assert s.train.optimizer == "paged_adamw8bit"  # the technique's default
    run = job.create(s, tmp_path / "runs")
    trainer = Trainer(run, s)
    assert trainer.run_job() == 0
    assert isinstance(trainer.optimizer.optimizer, bnb.optim.PagedAdamW8bit)
    losses = list(losses_by_step(events(run)).values())
    assert len(losses) == 30 and _mean(losses[-5:]) < _mean(losses[:5]) - 0.8, losses

    # every projection is NF4, double-quantized, computing in bf16; only LoRA tensors train
    trained = _four_bit(trainer.prep.model)
    assert len(trained) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    for packed, state in trained.values():
        assert packed.dtype == torch.uint8 and state.quant_type == "nf4" and state.nested
    layer = next(m for m in trainer.prep.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.compute_dtype == torch.bfloat16
    assert all("lora_" in n for n, p in trainer.prep.model.named_parameters() if p.requires_grad)

    # the 4-bit base after training is bit-identical to the same base freshly quantized
    fresh, _ = qlora.load_quantized(s)
    fresh_4bit = _four_bit(fresh)
    assert fresh_4bit.keys() == trained.keys()
    for key, (packed, state) in trained.items():
        assert torch.equal(packed, fresh_4bit[key][0]) and torch.equal(state.absmax, fresh_4bit[key][1].absmax)

    # so are the layers kept in floating point (norms, embeddings, head)
    start = tensors(model_dir / "model.safetensors")
    floats = {n.removeprefix("base_model.model."): p for n, p in trainer.prep.model.named_parameters()
              if "lora_" not in n and p.dtype.is_floating_point}
    assert floats and all(torch.equal(start[n], p.detach().to(start[n].dtype)) for n, p in floats.items())

    # checkpoints and final/: the adapter alone, changed by training; it loads on the base and generates
    ckpt, final = run / "checkpoints" / "step-000010", run / "final"
    assert not list(ckpt.glob("model*.safetensors")) and not (final / "model.safetensors").exists()
    early, last = tensors(ckpt / lora.ADAPTER_WEIGHTS), tensors(final / lora.ADAPTER_WEIGHTS)
    assert early.keys() == last.keys() and all(not torch.equal(early[k], last[k]) for k in last)
    done = events(run, "done")[-1]
    assert 0 < done["adapter_bytes"] < done["base_bytes"] / 10
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), final).eval()
    ids = torch.tensor([[5, 17, 40]])
    assert model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False).shape[1] == 7
    text, source = generate(run, "the cat", max_new_tokens=6)  # llm-wizard generate: the adapter on the 4-bit base
    assert source == "final" and text


def test_without_4bit_support_train_refuses_before_launch_and_offers_lora(base, tmp_path: Path, capsys,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tui.cli import main

    corpus, model_dir = base
    monkeypatch.setattr(qlora, "check_support", lambda: "bitsandbytes cannot run 4-bit NF4 layers on cpu: test")
    spec_file = tmp_path / "q.toml"
    spec_file.write_text(spec.to_toml(finetune_spec("qlora", model_dir, corpus)))
    runs = tmp_path / "runs"
    assert main(["train", str(spec_file), "--runs-dir", str(runs)]) == 2
    message = capsys.readouterr().err
    assert "cannot run 4-bit" in message and 'technique = "lora"' in message and "--set technique=lora" in message
    assert not runs.exists() or not any(runs.iterdir())  # refused before any run folder was made

    s = finetune_spec("qlora", model_dir, corpus)  # launched some other way: the job refuses the same way
    run = job.create(s, runs)
    assert Trainer(run, s).run_job() == 2
    assert 'technique = "lora"' in events(run, "error")[-1]["message"]


def test_tiny_preset_runs_on_a_local_model(base, tmp_path: Path) -> None:
    import torch

    corpus, model_dir = base
    s = spec.load(PRESETS / "qlora-tiny.toml", [f"model.path={model_dir}", f"data.path={corpus}",
                                                "train.max_steps=4", "eval.every=2", "checkpoint.every=2",
                                                "train.warmup_steps=1", "train.precision=bf16"])
    run = job.create(s, tmp_path / "runs")
    trainer = Trainer(run, s)
    _reset_accelerate()  # accelerate keeps one precision per process (a job is one run); this one is bf16
    try:
        assert trainer.run_job() == 0
    finally:
        _reset_accelerate()
    assert (run / "final" / lora.ADAPTER_WEIGHTS).is_file() and events(run, "eval")
    # under bf16 autocast the frozen embeddings and head sit in bf16 (as the QLoRA reference keeps them)
    model = trainer.prep.model.get_base_model()
    assert model.get_input_embeddings().weight.dtype == model.get_output_embeddings().weight.dtype == torch.bfloat16


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
