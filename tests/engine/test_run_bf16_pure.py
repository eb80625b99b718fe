"""Pure bf16 (`train.precision = "bf16-pure"`) on the CPU: a scratch run and a LoRA run keep every parameter,
gradient and AdamW state in bf16 (no fp32 copy, no autocast), the loss falls, checkpoints hold bf16 tensors,
and a run stopped at step 10 and resumed to 20 matches a straight 20-step run bit for bit. QLoRA trains
bf16 adapters on its NF4 base (its norms, made fp32 by peft, in bf16 too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import spec
from engine.run import job, step_guard
from engine.run.trainer import Trainer
from engine.runfolder import folder as runfolder
from engine.techniques import lora
from finetune_helpers import base_model, corpus_and_tokenizer, finetune_spec, tensors
from run_helpers import in_process_trainer, losses_by_step, make_corpus, tiny_spec

pytestmark = pytest.mark.slow


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _with_steps(s: spec.RunSpec, steps: int) -> spec.RunSpec:
    return spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": steps}})


def _train(s: spec.RunSpec, runs: Path) -> tuple[Trainer, Path, dict[int, float]]:
    run = job.create(s, runs)
    with in_process_trainer():
        trainer = Trainer(run, s)
        assert trainer.run_job() == 0
        assert trainer.accelerator.mixed_precision == "no"  # no autocast (read before the state is reset)
    return trainer, run, losses_by_step(runfolder.read_events(run)[0])


def _resumed(s: spec.RunSpec, runs: Path) -> dict[int, float]:
    """10 steps (checkpoint at 10), then a new Trainer resumes up to 20: the losses after step 10."""
    short = _with_steps(s, 10)
    run = job.create(short, runs)
    with in_process_trainer():
        assert Trainer(run, short).run_job() == 0
    (run / runfolder.SPEC).write_text(spec.to_toml(s))  # max_steps may change on resume
    before = runfolder.read_events(run)[1]
    with in_process_trainer():
        assert Trainer(run, s, resume=True).run_job() == 0
    return losses_by_step(runfolder.read_events(run, before)[0])


def _assert_pure_bf16(trainer: Trainer) -> None:
    import torch

    params = list(trainer.prep.model.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params if p.is_floating_point())
    opt = step_guard.inner(trainer.optimizer)
    states = [(k, v) for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    assert states and all(v.dtype == torch.bfloat16 for _, v in states), {k: v.dtype for k, v in states}
    assert trainer.device_guard  # the fused AdamW takes bf16 parameters and still skips on the device


def test_scratch_trains_in_pure_bf16_and_resumes_exactly(tmp_path: Path) -> None:
    import torch

    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 20, "schedule": "constant", "precision": "bf16-pure"},
                  checkpoint={"every": 10, "keep": 2})
    trainer, run, straight = _train(s, tmp_path / "runs")
    _assert_pure_bf16(trainer)
    losses = [straight[k] for k in sorted(straight)]
    assert len(losses) == 20 and _mean(losses[-3:]) < _mean(losses[:3]) - 1.0, losses
    saved = tensors(next((run / "checkpoints" / "step-000020").glob("model*.safetensors")))
    assert saved and all(v.dtype == torch.bfloat16 for v in saved.values() if v.is_floating_point())

    after = _resumed(s, tmp_path / "runs")
    assert sorted(after) == list(range(11, 21))
    assert all(after[k] == straight[k] for k in after), {k: (after[k], straight[k]) for k in after}


def test_lora_trains_bf16_adapters_on_a_bf16_base_and_resumes_exactly(tmp_path: Path) -> None:
    import torch

    corpus, tokenizer = corpus_and_tokenizer(tmp_path)
    model_dir = base_model("gpt2", tokenizer, tmp_path / "base")
    s = finetune_spec("lora", model_dir, corpus, train={"lr": 1e-2, "max_steps": 20, "precision": "bf16-pure"},
                      options={"lora_rank": 8}, checkpoint={"every": 10, "keep": 2})
    trainer, run, straight = _train(s, tmp_path / "runs")
    _assert_pure_bf16(trainer)
    adapters = [n for n, p in trainer.prep.model.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n in adapters)
    losses = [straight[k] for k in sorted(straight)]
    assert len(losses) == 20 and _mean(losses[-3:]) < _mean(losses[:3]) - 0.5, losses
    saved = tensors(run / "checkpoints" / "step-000020" / lora.ADAPTER_WEIGHTS)
    assert saved and all(v.dtype == torch.bfloat16 for v in saved.values())

    after = _resumed(s, tmp_path / "runs")
    assert sorted(after) == list(range(11, 21))
    assert all(after[k] == straight[k] for k in after), {k: (after[k], straight[k]) for k in after}


def test_qlora_trains_bf16_adapters_on_the_nf4_base(tmp_path: Path) -> None:
    import torch

    from engine.techniques import qlora

    assert qlora.check_support() is None, qlora.check_support()  # bitsandbytes runs NF4 on the CPU too
    corpus, tokenizer = corpus_and_tokenizer(tmp_path)
    model_dir = base_model("llama", tokenizer, tmp_path / "base")
    s = finetune_spec("qlora", model_dir, corpus, train={"lr": 1e-2, "max_steps": 20, "precision": "bf16-pure",
                                                         "optimizer": "adamw"})
    trainer, _, straight = _train(s, tmp_path / "runs")
    _assert_pure_bf16(trainer)
    assert {p.dtype for p in trainer.prep.model.parameters()} == {torch.bfloat16, torch.uint8}  # uint8: NF4
    losses = [straight[k] for k in sorted(straight)]
    assert len(losses) == 20 and _mean(losses[-3:]) < _mean(losses[:3]) - 0.5, losses
