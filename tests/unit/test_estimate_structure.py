"""The estimate follows the model's own structure: the attention transformers picks, tied embeddings under any
module name, LoRA on the Linear names the model has (and refused, as the run refuses, on names it lacks), the
private cache of what was measured, and later estimates from it without building anything."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.estimate.memory import EstimateRequest, estimate
from engine.estimate.params import parameters, trainable
from engine.models import shape_cache
from engine.models.shape import dims_from_config

SMALL = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
BLOOM = dict(model_type="bloom", vocab_size=256, hidden_size=64, n_layer=2, n_head=4)
PHI3 = dict(model_type="phi3", intermediate_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SMALL)


def _folder(tmp_path: Path, cfg: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.mark.parametrize("cfg,attention", [
    (BLOOM, "eager"),  # ALiBi: transformers has no SDPA path for it
    (dict(model_type="gemma2", intermediate_size=128, head_dim=16, **SMALL), "eager"),
    (dict(model_type="gpt_neox", intermediate_size=128, **SMALL), "sdpa"),
], ids=["bloom", "gemma2", "gpt_neox"])
def test_the_attention_is_the_one_transformers_picks(cfg: dict, attention: str) -> None:
    assert dims_from_config(dict(cfg)).attention == attention


def test_tied_embeddings_under_another_name_share_the_heads_gradient() -> None:
    d = dims_from_config(dict(BLOOM))
    assert d.tie_embeddings and d.tied_module == "word_embeddings"
    req = EstimateRequest(arch="llama", technique="full", precision="fp32")
    p = parameters(req, d, trainable(req, d))
    emb = next(t.numel for t in d.tensors if t.module == "word_embeddings")
    assert p.tied_grad == 4 * emb and p.embed_grad == 0  # one tensor, its gradient summed at the head


def test_lora_on_fused_projections_and_names_the_model_lacks(tmp_path: Path) -> None:
    bloom = EstimateRequest(model=_folder(tmp_path, BLOOM), technique="lora", lora_rank=4, batch_size=1, seq_len=32)
    d = bloom.dims()
    assert d.default_lora_targets() == ("query_key_value",)  # peft's default for BLOOM
    est = estimate(bloom, gpus=[], dims=d, measure=False)
    assert est.model.trainable_params == 2 * 4 * (64 + 192)  # two layers' A and B on the fused qkv
    with pytest.raises(UserError, match="q_proj.*query_key_value"):
        estimate(EstimateRequest(**{**bloom.__dict__, "lora_targets": ("q_proj", "v_proj")}), gpus=[], dims=d)
    phi3 = tmp_path / "phi3"
    phi3.mkdir()
    req = EstimateRequest(model=_folder(phi3, PHI3), technique="lora", lora_rank=4, lora_targets=("qkv_proj",),
                          batch_size=1, seq_len=32)
    assert estimate(req, gpus=[], measure=False).model.trainable_params == 2 * 4 * (64 + 3 * 64)
    with pytest.raises(UserError, match="no default LoRA targets.*qkv_proj"):  # peft has no list for phi3
        estimate(EstimateRequest(**{**req.__dict__, "lora_targets": ()}), gpus=[], measure=False)


def test_measured_once_cached_privately_then_answered_in_under_a_second(tmp_path: Path) -> None:
    req = EstimateRequest(model=_folder(tmp_path, BLOOM), technique="full", batch_size=2, seq_len=64)
    est = estimate(req, gpus=[])
    assert est.sources["activations"].startswith("measured") and est.sources["attention"] == "eager"
    folder = shape_cache.folder()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.glob("*.json"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    start = time.perf_counter()
    again = estimate(EstimateRequest(**{**req.__dict__, "batch_size": 8, "seq_len": 512}), gpus=[])
    assert time.perf_counter() - start < 1.0 and again.sources == est.sources
    assert again.peak_bytes > est.peak_bytes
    # eager attention's s x s scores: activations grow faster than the sequence
    longer = estimate(EstimateRequest(**{**req.__dict__, "seq_len": 256}), gpus=[])
    assert longer.breakdown.activations > 4 * est.breakdown.activations


def test_a_model_that_cannot_be_built_here_falls_back_to_the_formulas(tmp_path: Path) -> None:
    cfg = dict(model_type="my_remote_model", auto_map={"AutoModelForCausalLM": "modeling_mine.MyModel"},
               intermediate_size=128, **SMALL)
    req = EstimateRequest(model=_folder(tmp_path, cfg), technique="full", batch_size=1, seq_len=64)
    d = req.dims()  # its code is never run: counted as a Llama of its numbers
    assert not d.buildable and not d.measurable and "remote code" in d.source
    est = estimate(req, gpus=[], dims=d)
    assert est.sources["activations"].startswith("formula") and est.peak_bytes > 0
    with pytest.raises(UserError, match="cannot build model_type 'nothing_known'"):
        dims_from_config({"model_type": "nothing_known"})
