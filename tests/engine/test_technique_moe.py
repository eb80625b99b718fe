"""MoE fine-tune (listing 5.5) of tiny Mixtral, Qwen2-MoE and Switch Transformers models built from configs:
the loss (CE + the router's auxiliary loss) falls, experts and routers train, each expert's share of the
tokens is in the metrics events, final/ loads and generates; a dense model is refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import technique_models
from engine import spec
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.run.trainer import Trainer
from run_helpers import losses_by_step, tiny_spec
from technique_models import corpus_and_tokenizer, gpt2, tensors

COEF = 0.1  # larger than the models' 0.001 so the auxiliary term is visible in the loss


PRESETS = Path(__file__).parents[2] / "presets"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    import torch

    threads = torch.get_num_threads()  # specs set threads = 1 in this (pytest's) process: put it back after
    tmp = tmp_path_factory.mktemp("moe")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
    text, tokenizer = corpus_and_tokenizer(tmp)
    mp.undo()
    yield text, tokenizer, tmp
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "switch"])
def test_moe_trains_with_router_loss_and_expert_shares(corpus, tmp_path: Path, kind: str) -> None:
    import torch
    from transformers import AutoConfig

    from engine.serve.generate import generate

    text, tokenizer, tmp = corpus
    folder = getattr(technique_models, kind)(tokenizer, tmp / kind, experts=4)
    s = tiny_spec(text, technique="moe", model={"path": str(folder)}, train={"lr": 3e-3, "max_steps": 30},
                  checkpoint={"every": 15, "keep": 2}, options={"aux_loss_coef": COEF})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0, [e for e in runfolder.read_events(run)[0] if e["type"] == "error"]
    evs = runfolder.read_events(run)[0]
    losses = losses_by_step(evs)
    assert sum(losses[k] for k in range(26, 31)) < sum(losses[k] for k in range(1, 6)) - 5 * 0.3, losses

    metrics = [e for e in evs if e["type"] == "metrics"]
    for m in metrics:
        shares = m["moe/expert_share"]
        assert len(shares) == 4 and math.isclose(sum(shares), 1.0, abs_tol=1e-3) and min(shares) >= 0
        assert m["moe/aux_loss"] > 0 and math.isfinite(m["moe/aux_loss"])
    if kind != "switch":  # causal: loss = CE + coef x aux exactly (Switch adds its router z-loss too)
        first = metrics[0]
        assert first["train/loss"] == pytest.approx(first["moe/ce"] + COEF * first["moe/aux_loss"], rel=1e-4)
    else:
        assert all(m["train/loss"] > m["moe/ce"] for m in metrics)

    # every weight trains, the routers included (their gradient comes through the routing weights and aux loss)
    before, after = tensors(folder), tensors(run / "final")
    routers = [k for k in before if "router" in k or k.endswith(("mlp.gate.weight", "moe.gate.weight"))]
    assert routers and all(not torch.equal(before[k], after[k]) for k in routers)
    experts = [k for k in before if "expert" in k and "router" not in k]
    assert experts and all(not torch.equal(before[k], after[k]) for k in experts)

    assert AutoConfig.from_pretrained(run / "final").model_type == AutoConfig.from_pretrained(folder).model_type
    text_out, source = generate(run, "the cat", max_new_tokens=5)
    assert source == "final" and text_out
    text_out, source = generate(run, "the cat", checkpoint_ref="15", max_new_tokens=5)
    assert source == "step-000015" and text_out


def test_a_dense_model_is_refused(corpus, tmp_path: Path) -> None:
    text, tokenizer, tmp = corpus
    folder = gpt2(tokenizer, tmp / "dense")
    s = tiny_spec(text, technique="moe", model={"path": str(folder)})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 2
    error = next(e for e in runfolder.read_events(run)[0] if e["type"] == "error")
    assert error["kind"] == "user" and "not a mixture-of-experts" in error["message"]


@pytest.mark.parametrize("preset,kind", [("moe-tiny.toml", "mixtral"), ("moe-switch-base-8.toml", "switch")])
def test_presets_run_on_tiny_models(corpus, tmp_path: Path, preset: str, kind: str) -> None:
    text, tokenizer, tmp = corpus
    folder = getattr(technique_models, kind)(tokenizer, tmp / f"preset-{kind}")
    s = spec.load(PRESETS / preset, [f"model.path={folder}", f"data.path={text}", "train.max_steps=4",
                                     "train.warmup_steps=1", "train.seq_len=32", "train.batch_size=4",
                                     "train.precision=\"fp32\"", "eval.every=2", "checkpoint.every=2"])
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    metrics = [e for e in runfolder.read_events(run)[0] if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [4] and len(metrics[0]["moe/expert_share"]) == 4
    assert (run / "final" / "config.json").is_file()


def test_N1_a_skipped_step_stays_out_of_the_logged_moe_terms(corpus, tmp_path: Path) -> None:
    """The model's logits turn NaN in one step (a 16-bit overflow): the trainer skips that step, and the MoE
    terms in the metrics events must leave it out too."""
    text, tokenizer, tmp = corpus
    folder = technique_models.mixtral(tokenizer, tmp / "mixtral-nan", experts=4)
    s = tiny_spec(text, technique="moe", model={"path": str(folder)}, log={"every": 2},
                  train={"lr": 3e-3, "max_steps": 6, "nonfinite_patience": 3}, options={"aux_loss_coef": COEF})
    run = job.create(s, tmp_path / "runs")
    t = Trainer(run, s)
    t._prepare()
    forward, calls = t.prep.model.forward, [0]

    def overflowing(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:
            out.logits = out.logits * float("nan")
        return out

    t.prep.model.forward = overflowing
    try:
        t.set_state("running")
        assert t._loop() == 0
    finally:
        t.events.close()
    evs = runfolder.read_events(run)[0]
    assert [e for e in evs if e["type"] == "alert" and e.get("kind") == "nan"]  # the step was skipped
    metrics = [e for e in evs if e["type"] == "metrics"]
    assert metrics and all(math.isfinite(m["moe/ce"]) and math.isfinite(m["moe/aux_loss"]) for m in metrics), metrics
