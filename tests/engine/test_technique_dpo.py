"""Preference tuning end to end on the CPU: a tiny chat model learns to prefer the chosen answers of its own
training pairs (DPO under LoRA, ORPO), a full fine-tune's reference is precomputed into the run folder or
kept as a frozen copy as the data and the run's length make it cheaper, and the live metrics reach the
events."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.run import job
from engine.run.trainer import Trainer
from preference_helpers import preference_setup, preference_spec
from run_helpers import events, in_process_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("dpo")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_WIZARD_CACHE", str(root / "cache"))
    model, data = preference_setup(root, n=64)
    with in_process_trainer():
        yield SimpleNamespace(root=root, model=model, data=data)
    mp.undo()


def _train_pair_rewards(s, run: Path, checkpoint: Path | None) -> tuple[float, float]:
    """(mean reward margin, share of pairs ranked right) over every training pair, by the weights in `checkpoint`
    (None: the model before training)."""
    import numpy as np
    import torch

    from engine.techniques import dpo
    from engine.techniques.base import SetupContext

    prep = dpo.setup(SetupContext(s, run))
    if checkpoint is not None:
        dpo.load(prep, checkpoint)
    prep.model.eval()
    margins = []
    with torch.no_grad():
        for first in range(0, prep.data.n_train_blocks, 8):
            rows = np.arange(first, min(first + 8, prep.data.n_train_blocks))
            chosen, rejected = dpo.rewards(prep, prep.data.pairs_at(rows))
            margins.append(chosen - rejected)
    m = torch.cat(margins)
    return float(m.mean()), float((m > 0).float().mean())


def test_dpo_lora_raises_the_margin_and_accuracy_on_its_own_pairs(tiny, tmp_path: Path) -> None:
    s = preference_spec("dpo", tiny.model, tiny.data, train={"max_steps": 30, "lr": 1e-2}, options={"beta": 0.5})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    ready = next(e for e in events(run, "state") if e.get("message") == "model ready")
    assert ready["data"]["format"] == "preference" and ready["data"]["examples"] == 64
    assert any("reference model: adapter" in w for w in ready["data"]["warnings"])
    metrics = [e for e in events(run) if e["type"] == "metrics"]
    keys = {"pref/reward_chosen", "pref/reward_rejected", "pref/margin", "pref/accuracy"}
    assert all(keys <= e.keys() for e in metrics)
    before = _train_pair_rewards(s, run, None)
    after = _train_pair_rewards(s, run, run / "checkpoints" / "step-000030")
    assert before == (0.0, 0.0)  # the policy is its reference: every margin 0
    print(f"training pairs: margin {before[0]:.3f} -> {after[0]:.3f}, accuracy {before[1]:.2f} -> {after[1]:.2f}")
    assert after[0] > 0.3 and after[1] >= 0.9, after
    assert not (run / "reference_logps.safetensors").exists()  # the adapter is switched off instead


def test_orpo_raises_the_odds_of_the_chosen_answers(tiny, tmp_path: Path) -> None:
    s = preference_spec("orpo", tiny.model, tiny.data, train={"max_steps": 30, "lr": 1e-2}, options={"beta": 1.0})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    metrics = [e for e in events(run) if e["type"] == "metrics"]
    first, last = metrics[:5], metrics[-5:]
    mean = lambda evs, k: sum(e[k] for e in evs) / len(evs)  # noqa: E731
    assert mean(last, "pref/log_odds") > mean(first, "pref/log_odds") + 0.05
    assert mean(last, "pref/accuracy") >= 0.9
    assert mean(last, "pref/nll") < mean(first, "pref/nll")
    assert (run / "final" / "adapter_model.safetensors").is_file()


def test_full_fine_tune_reference_is_precomputed_or_copied_as_is_cheaper(tiny, tmp_path: Path) -> None:
    from safetensors import safe_open

    # 12 steps x 4 pairs score 48 of 64 pairs... fewer than a precomputation's pass over all: a frozen copy
    s = preference_spec("dpo", tiny.model, tiny.data, train={"max_steps": 12}, options={"finetuning": "full"})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    ready = next(e for e in events(run, "state") if e.get("message") == "model ready")
    assert any("reference model: copy" in w for w in ready["data"]["warnings"]), ready["data"]["warnings"]
    assert not (run / "reference_logps.safetensors").exists()
    # 20 steps score 80 pairs: one pass over the 64 before training costs less, and is stored in the run folder
    s = preference_spec("dpo", tiny.model, tiny.data, train={"max_steps": 20}, options={"finetuning": "full"})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    ready = next(e for e in events(run, "state") if e.get("message") == "model ready")
    assert any("reference model: precomputed" in w for w in ready["data"]["warnings"])
    with safe_open(str(run / "reference_logps.safetensors"), framework="pt") as f:
        table = f.get_tensor("logps")
        assert f.metadata()["data_fingerprint"]
    assert table.shape == (64, 2) and bool(table.isfinite().all()) and bool((table < 0).all())
    margins = [e["pref/margin"] for e in events(run) if e["type"] == "metrics"]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # step 1: the model is the one that computed the table


def test_the_dpo_tiny_preset_trains_on_the_cpu(tiny, tmp_path: Path) -> None:
    from engine import spec

    preset = Path(__file__).parents[2] / "presets" / "dpo-tiny.toml"
    s = spec.load(preset, [f"model.path={tiny.model}", "train.max_steps=30", "eval.every=0"])
    assert s.technique == "dpo" and Path(s.data.path).is_file()  # its pairs ship beside it
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    metrics = [e for e in events(run) if e["type"] == "metrics"]
    first, last = metrics[:3], metrics[-3:]
    assert sum(e["pref/margin"] for e in last) > sum(e["pref/margin"] for e in first) + 0.3
    assert min(e["pref/accuracy"] for e in last) >= 0.75
