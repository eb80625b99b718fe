"""Interrupt and resume, bit for bit, for prompt tuning and MoE fine-tuning (RELIABILITY R2; scratch, LoRA
and distillation have theirs in test_run_resume_exact, test_technique_lora and test_technique_distill).

Each run is stopped by a `stop` command at step 5, between two interval checkpoints, and resumed in a new
Trainer to step 12: the losses of steps 6-12 and final/'s weights equal those of a run never stopped. The
Mixtral model routes with jitter noise, so its resume also needs the RNG state. Negative controls: a resume
that leaves out the virtual tokens (prompt tuning) or the RNG state (MoE) differs, so the check can fail;
and a resume with a changed option is refused (the same config is enforced)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import engine.run.checkpointing
from engine import spec
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.techniques import prompt_tuning
from engine.run.trainer import Trainer
from run_helpers import in_process_trainer, losses_by_step, stopped_in_process, tiny_spec
from technique_models import corpus_and_tokenizer, gpt2, save_model, tensors

pytestmark = pytest.mark.slow
STOP_AT, STEPS = 5, 12


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    from transformers import MixtralConfig

    tmp = tmp_path_factory.mktemp("r2")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
    corpus, tokenizer = corpus_and_tokenizer(tmp, lines=600)
    prompt_base = gpt2(tokenizer, tmp / "gpt2", init=0.2)  # a larger init: the prompt matters (see its tests)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=128, router_jitter_noise=0.2, bos_token_id=tokenizer.eos_token_id,
                           eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    mixtral = save_model(config, tokenizer, tmp / "mixtral")
    mp.undo()
    with in_process_trainer():
        yield {"corpus": corpus, "prompt-tuning": prompt_base, "moe": mixtral}


def _spec(models: dict, technique: str, **options) -> spec.RunSpec:
    lr = {"prompt-tuning": 0.1, "moe": 3e-3}[technique]
    return tiny_spec(models["corpus"], technique=technique, model={"path": str(models[technique])},
                     train={"lr": lr, "max_steps": STEPS}, checkpoint={"every": 4, "keep": 5}, options=options)


def _straight(s: spec.RunSpec, runs: Path) -> Path:
    run = job.create(s, runs)
    assert Trainer(run, s).run_job() == 0
    return run


def _stopped(s: spec.RunSpec, runs: Path) -> Path:
    """A run stopped by a `stop` command written after step STOP_AT, with the checkpoint the stop saved."""
    run = stopped_in_process(s, runs, STOP_AT)
    assert (run / "checkpoints" / f"step-{STOP_AT:06d}" / "manifest.json").is_file()
    return run


def _resumed(run: Path, s: spec.RunSpec) -> dict[int, float]:
    offset = runfolder.read_events(run)[1]
    assert Trainer(run, s, resume=True).run_job() == 0
    return losses_by_step(runfolder.read_events(run, offset)[0])


def _check_exact(models: dict, technique: str, weights: str, tmp_path: Path, **options) -> tuple[Path, dict]:
    s = _spec(models, technique, **options)
    straight = _straight(s, tmp_path / "runs")
    full = losses_by_step(runfolder.read_events(straight)[0])
    run = _stopped(s, tmp_path / "runs")
    spare = tmp_path / "spare" / run.name
    shutil.copytree(run, spare)  # the same stopped run, for the negative control
    after = _resumed(run, s)
    assert sorted(after) == list(range(STOP_AT + 1, STEPS + 1))
    assert all(after[k] == full[k] for k in after), {k: (after[k], full[k]) for k in after}
    a, b = tensors(run / "final", weights), tensors(straight / "final", weights)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    return spare, full


def test_R2_prompt_tuning_stop_and_resume_is_bit_identical(models, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spare, full = _check_exact(models, "prompt-tuning", "adapter_model.safetensors", tmp_path, num_virtual_tokens=4)

    # the same config is enforced: more virtual tokens is another model, refused before training
    changed = _spec(models, "prompt-tuning", num_virtual_tokens=6)
    (spare / runfolder.SPEC).write_text(spec.to_toml(changed))
    offset = runfolder.read_events(spare)[1]
    assert Trainer(spare, changed, resume=True).run_job() == 2
    (error,) = [e for e in runfolder.read_events(spare, offset)[0] if e["type"] == "error"]
    assert "num_virtual_tokens" in error["message"] and "was 4, now 6" in error["message"]
    (spare / runfolder.SPEC).write_text(spec.to_toml(_spec(models, "prompt-tuning", num_virtual_tokens=4)))

    # negative control: a resume that does not load the virtual tokens differs
    monkeypatch.setattr(prompt_tuning, "load", lambda prep, folder: None)
    skipped = _resumed(spare, _spec(models, "prompt-tuning", num_virtual_tokens=4))
    assert any(skipped[k] != full[k] for k in skipped)


def test_R2_moe_stop_and_resume_is_bit_identical(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spare, full = _check_exact(models, "moe", "model.safetensors", tmp_path, aux_loss_coef=0.1)

    # negative control: without the RNG state the router's jitter noise differs after the resume
    monkeypatch.setattr(engine.run.checkpointing, "set_rng_state", lambda state: None)
    skipped = _resumed(spare, _spec(models, "moe", aux_loss_coef=0.1))
    assert any(skipped[k] != full[k] for k in skipped)
