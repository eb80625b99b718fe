"""One DPO step and one ORPO step against TRL's own trainers: the same tiny model, the same pairs, the same loss
and gradients within 1e-5.

DPO goes through TRL's whole path (its tokenization of conversational pairs, its collator, DPOTrainer's
compute_loss with a reference model), and the ids and answer masks TRL builds are checked to be the ones our
data path renders. ORPO's trainer tokenizes in its own older way, so the same batch of our ids is handed to
ORPOTrainer.get_batch_loss_metrics in its layout; our ORPO runs with options.nll_on = "all", TRL's NLL over
prompt + chosen answer (the default "answer" differs, checked too). Negative controls: another beta, and DPO
with another reference, give another loss."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.techniques.base import Prepared
from preference_helpers import conversational, pairs, preference_setup
from chat_helpers import write_jsonl

pytest.importorskip("trl")
pytestmark = pytest.mark.slow  # two trainers built and stepped: about 35 s on the shared 2-core machine
TOL = 1e-5
BETA = 0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data.chat_templates import resolve
    from engine.data.preference import pair_blocks
    from engine.data.sources import DataSource

    root = tmp_path_factory.mktemp("parity")
    model_dir, _ = preference_setup(root, n=4)
    rows = conversational(pairs(4, seed=3))
    data = write_jsonl(root / "conv.jsonl", rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_WIZARD_CACHE", str(root / "cache"))
    blocks = pair_blocks(DataSource(str(data), pairs=True), tokenizer, resolve("auto", tokenizer), 256,
                         val_fraction=0.0)
    mp.undo()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():  # a trained-looking model: random enough that the policy differs from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return SimpleNamespace(root=root, rows=rows, tokenizer=tokenizer, model=model, reference=reference,
                           batch=blocks.pairs_at(np.arange(len(rows))))


def _ours(technique: str, model, batch, **extra):
    module = __import__(f"engine.techniques.{technique}", fromlist=["loss"])
    prep = Prepared(model=model, tokenizer=None, data=None, param_groups=[],
                    extra={"beta": BETA, "sums": None, **extra})
    model.zero_grad(set_to_none=True)
    loss = module.loss(prep, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, prep


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= TOL, worst
    print(f"max gradient difference {worst:.3g}")


def test_one_dpo_step_equals_trl(tiny, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    trl_model = copy.deepcopy(tiny.model)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=BETA, max_length=None,
                     report_to=[], use_cpu=True, bf16=False, fp16=False, dataset_num_proc=None, seed=0)
    trainer = DPOTrainer(model=trl_model, ref_model=copy.deepcopy(tiny.reference), args=args,
                         train_dataset=Dataset.from_list(tiny.rows), processing_class=tiny.tokenizer)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(tiny.rows))])

    # TRL's tokenization of the pairs is our data path's: the same ids and the same answer tokens
    from engine.data.preference import split_pairs

    ids, answer, real, _ = split_pairs(tiny.batch)
    width = inputs["input_ids"].shape[1]
    assert ids.shape[1] == width
    assert torch.equal(inputs["input_ids"][inputs["attention_mask"] == 1], ids[real])
    assert torch.equal(inputs["completion_mask"].bool(), answer)

    trainer.model.train()
    trl_model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_loss = trl_loss.detach()
    trl_grads = {n: p.grad.clone() for n, p in trl_model.named_parameters()}

    ref = copy.deepcopy(tiny.reference).eval().requires_grad_(False)
    policy = copy.deepcopy(tiny.model).train()
    loss, grads, prep = _ours("dpo", policy, tiny.batch, reference="copy", ref_model=ref)
    assert abs(float(loss) - float(trl_loss)) <= TOL, (float(loss), float(trl_loss))
    print(f"loss {float(loss):.8f} vs TRL {float(trl_loss):.8f}")
    assert float(loss) != pytest.approx(np.log(2), abs=1e-3)  # the policy is not the reference: a real test
    _close(grads, trl_grads)

    # the logged rewards are TRL's
    from engine.techniques import dpo

    ours = dpo.metrics(prep)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert ours["pref/reward_chosen"] == pytest.approx(logged["rewards/chosen"], abs=TOL)
    assert ours["pref/margin"] == pytest.approx(logged["rewards/margins"], abs=TOL)
    assert ours["pref/accuracy"] == pytest.approx(logged["rewards/accuracies"], abs=TOL)

    # negative controls: another beta, another reference
    other, _, _ = _ours("dpo", copy.deepcopy(tiny.model).train(), tiny.batch, reference="copy", ref_model=ref, beta=0.2)
    assert abs(float(other) - float(trl_loss)) > 1e-3
    moved = copy.deepcopy(tiny.model).eval().requires_grad_(False)
    other, _, _ = _ours("dpo", copy.deepcopy(tiny.model).train(), tiny.batch, reference="copy", ref_model=moved)
    assert abs(float(other) - float(trl_loss)) > 1e-3


def _orpo_inputs(batch) -> dict:
    """Our batch in the layout ORPOTrainer's concatenated_forward reads (labels: the answers, -100 elsewhere)."""
    from engine.data.preference import split_pairs

    ids, answer, real, _ = split_pairs(batch)
    n = batch.size(0)
    out = {}
    for name, rows in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
        out[f"{name}_input_ids"] = ids[rows]
        out[f"{name}_attention_mask"] = real[rows].long()
        out[f"{name}_labels"] = ids[rows].masked_fill(~answer[rows], -100)
    return out


def test_one_orpo_step_equals_trl(tiny, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    trl_model = copy.deepcopy(tiny.model)
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=BETA, max_length=256,
                      report_to=[], use_cpu=True, bf16=False, fp16=False, seed=0)
    strings = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
                "rejected": r["rejected"][0]["content"]} for r in tiny.rows]
    trainer = ORPOTrainer(model=trl_model, args=args, train_dataset=Dataset.from_list(strings),
                          processing_class=tiny.tokenizer)
    trl_model.train()
    trl_model.zero_grad(set_to_none=True)
    trl_loss, logged = trainer.get_batch_loss_metrics(trl_model, _orpo_inputs(tiny.batch))
    trl_loss.backward()
    trl_loss = trl_loss.detach()
    trl_grads = {n: p.grad.clone() for n, p in trl_model.named_parameters()}

    loss, grads, prep = _ours("orpo", copy.deepcopy(tiny.model).train(), tiny.batch, nll_on="all")
    assert abs(float(loss) - float(trl_loss)) <= TOL, (float(loss), float(trl_loss))
    print(f"loss {float(loss):.8f} vs TRL {float(trl_loss):.8f}")
    _close(grads, trl_grads)
    from engine.techniques import orpo

    ours = orpo.metrics(prep)
    assert ours["pref/reward_chosen"] == pytest.approx(logged["rewards/chosen"], abs=TOL)
    assert ours["pref/nll"] == pytest.approx(logged["nll_loss"], abs=TOL)
    assert ours["pref/log_odds"] == pytest.approx(logged["log_odds_chosen"], abs=TOL)

    # negative controls: another beta; the NLL on the answer alone (the default) is another loss
    other, _, _ = _ours("orpo", copy.deepcopy(tiny.model).train(), tiny.batch, nll_on="all", beta=0.5)
    assert abs(float(other) - float(trl_loss)) > 1e-3
    other, _, _ = _ours("orpo", copy.deepcopy(tiny.model).train(), tiny.batch, nll_on="answer")
    assert abs(float(other) - float(trl_loss)) > 1e-3
