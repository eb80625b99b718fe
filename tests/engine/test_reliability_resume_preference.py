"""Interrupt and resume, bit for bit, for preference tuning (RELIABILITY R2 for dpo and orpo): DPO under LoRA
(the reference is the base with the adapter off), DPO as a full fine-tune with its reference log-probs
precomputed into the run folder, and ORPO.

Each run is stopped by a `stop` command at step 5, between two interval checkpoints, and resumed in a new
Trainer to step 12: the losses of steps 6-12 and final/'s weights equal those of a run never stopped.
Negative controls: a resume that does not load the adapter differs (so the check can fail), and a
precomputed run whose reference file is gone is refused rather than recomputed from trained weights."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.run import job
from engine.run.trainer import Trainer
from engine.runfolder import folder as runfolder
from engine.techniques import dpo, pairs
from preference_helpers import preference_setup, preference_spec
from run_helpers import in_process_trainer, losses_by_step, stopped_in_process
from technique_models import tensors

pytestmark = pytest.mark.slow
STOP_AT, STEPS = 5, 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("r2-pref")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_WIZARD_CACHE", str(root / "cache"))
    model, data = preference_setup(root, n=40)
    with in_process_trainer():
        yield SimpleNamespace(model=model, data=data)
    mp.undo()


def _spec(tiny: SimpleNamespace, technique: str, **options):
    # lora_dropout on: the resume must also restore the RNG that draws its masks
    return preference_spec(technique, tiny.model, tiny.data, train={"max_steps": STEPS, "lr": 5e-3},
                           checkpoint={"every": 4, "keep": 5}, options=options)


def _stopped(s, runs: Path) -> Path:
    return stopped_in_process(s, runs, STOP_AT)


def _resumed(run: Path, s) -> tuple[int, dict[int, float]]:
    offset = runfolder.read_events(run)[1]
    code = Trainer(run, s, resume=True).run_job()
    return code, losses_by_step(runfolder.read_events(run, offset)[0])


def _check_exact(tiny, technique: str, weights: str, tmp_path: Path, **options) -> tuple[Path, dict]:
    s = _spec(tiny, technique, **options)
    straight = job.create(s, tmp_path / "runs")
    assert Trainer(straight, s).run_job() == 0
    full = losses_by_step(runfolder.read_events(straight)[0])
    run = _stopped(s, tmp_path / "runs")
    spare = tmp_path / "spare" / run.name
    shutil.copytree(run, spare)
    code, after = _resumed(run, s)
    assert code == 0
    assert sorted(after) == list(range(STOP_AT + 1, STEPS + 1))
    assert all(after[k] == full[k] for k in after), {k: (after[k], full[k]) for k in after}
    a, b = tensors(run / "final", weights), tensors(straight / "final", weights)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    return spare, full


def test_R2_dpo_lora_stop_and_resume_is_bit_identical(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spare, full = _check_exact(tiny, "dpo", "adapter_model.safetensors", tmp_path, lora_rank=4, lora_dropout=0.1)
    # negative control: a resume that does not load the adapter trains on from a fresh one
    monkeypatch.setattr(pairs, "load", lambda prep, folder: None)
    code, skipped = _resumed(spare, _spec(tiny, "dpo", lora_rank=4, lora_dropout=0.1))
    assert code == 0 and any(skipped[k] != full[k] for k in skipped)


def test_R2_dpo_full_precomputed_stop_and_resume_is_bit_identical(tiny, tmp_path: Path) -> None:
    opts = {"finetuning": "full", "reference": "precomputed"}
    spare, _ = _check_exact(tiny, "dpo", "model.safetensors", tmp_path, **opts)
    # the reference log-probs are the model's before training: never recomputed from a checkpoint's weights
    (spare / dpo.REFERENCE_FILE).unlink()
    code, _ = _resumed(spare, _spec(tiny, "dpo", **opts))
    assert code == 2
    (error,) = [e for e in runfolder.read_events(spare)[0] if e["type"] == "error"]
    assert dpo.REFERENCE_FILE in error["message"]


def test_R2_orpo_stop_and_resume_is_bit_identical(tiny, tmp_path: Path) -> None:
    _check_exact(tiny, "orpo", "adapter_model.safetensors", tmp_path, lora_rank=4)


def test_R2_dpo_full_auto_resume_keeps_its_reference(tiny, tmp_path: Path) -> None:
    # auto picks precomputed here (12 steps score 48 pairs, more than the 40 held): a resume reads the file
    s = _spec(tiny, "dpo", finetuning="full")
    run = _stopped(s, tmp_path / "runs")
    spare = tmp_path / "spare" / run.name
    shutil.copytree(run, spare)
    code, _ = _resumed(run, s)
    assert code == 0
    notes = [e for e in runfolder.read_events(run)[0] if e.get("message") == "model ready"][-1]["data"]["warnings"]
    assert any("precomputed, read from" in n for n in notes), notes
    # without the file, auto falls back to a copy of the pretrained weights, never the checkpoint's
    (spare / dpo.REFERENCE_FILE).unlink()
    code, after = _resumed(spare, s)
    assert code == 0 and sorted(after) == list(range(STOP_AT + 1, STEPS + 1))
    notes = [e for e in runfolder.read_events(spare)[0] if e.get("message") == "model ready"][-1]["data"]["warnings"]
    assert any("reference model: copy, a frozen copy of the pretrained weights" in n for n in notes), notes
