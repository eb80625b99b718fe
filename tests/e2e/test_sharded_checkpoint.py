"""Sharded (FSDP2) checkpoints on the CPU: two gloo processes, a tiny GPT-2 sharded with fully_shard
(tests/support/sharded_helpers.py). One spawn (~7 s) produces what the slow tests compare; the unit tests need none."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import pytest

import sharded_helpers as h


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("sharded")
    facts = h.run_scenario(out)
    for f in facts:
        assert "error" not in f, f["error"]
    return out, facts


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _full(out: Path, kind: str, prefix: str = "param/") -> dict:
    """Whole parameters from the ranks' dim-0 shards (FSDP2 shards every parameter on dim 0)."""
    import torch

    parts = [_load(out / f"{kind}-{r}.safetensors") for r in range(h.WORLD)]
    return {k[len(prefix):]: torch.cat([p[k] for p in parts]) for k in parts[0] if k.startswith(prefix)}


@pytest.mark.slow
def test_sharded_save_writes_one_atomic_checkpoint_with_every_ranks_shards(scenario) -> None:
    from engine.checkpoints import store as checkpoint

    out, facts = scenario
    assert all(f["sharded"] for f in facts) and {f["name"] for f in facts} == {"step-000002"}
    ckpt = out / "run" / "checkpoints" / "step-000002"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    for r in range(h.WORLD):
        assert f"sharded/__{r}_0.distcp" in manifest  # each rank's own file, hashed by rank 0's manifest
    assert {"sharded/.metadata", "layout.json", "trainer_state.json"} <= set(manifest)
    assert checkpoint.verify(ckpt, full=True) is None
    assert [c.name for c in checkpoint.list_checkpoints(out / "run")] == ["step-000002"]
    assert not [p for p in (out / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_load_restores_parameters_and_optimizer_state_exactly(scenario) -> None:
    import torch

    out, facts = scenario
    assert all(f["fresh_differs"] for f in facts)  # the fresh model started elsewhere: the load did the work
    assert all(f["lr_after_load"] == [1e-2] for f in facts)  # the fresh optimizer's LR was 0.5: hyperparameters too
    for r in range(h.WORLD):
        saved, loaded = _load(out / f"saved-{r}.safetensors"), _load(out / f"loaded-{r}.safetensors")
        assert saved.keys() == loaded.keys()
        assert any(k.endswith("/exp_avg_sq") for k in saved)  # optimizer moments are covered, not only weights
        for k in saved:
            assert torch.equal(saved[k], loaded[k]), k


@pytest.mark.slow
def test_resume_continues_bit_identically(scenario) -> None:
    import torch

    out, _ = scenario
    for r in range(h.WORLD):
        straight, resumed = _load(out / f"straight-{r}.safetensors"), _load(out / f"resumed-{r}.safetensors")
        saved = _load(out / f"saved-{r}.safetensors")
        assert any(not torch.equal(straight[k], saved[k]) for k in saved)  # the two extra steps changed weights
        for k in straight:
            assert torch.equal(straight[k], resumed[k]), k


@pytest.mark.slow
def test_world_size_mismatch_is_refused_naming_both(scenario) -> None:
    _, facts = scenario
    for f in facts:
        assert "saved by 2 processes" in f["mismatch"] and "has 3" in f["mismatch"]


@pytest.mark.slow
def test_consolidated_folder_loads_with_transformers_and_gives_the_same_logits(scenario) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = scenario
    final = out / "final"
    assert (final / "model.safetensors").is_file() and not list(final.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    assert model.config.use_cache is True
    with torch.no_grad():
        logits = model(input_ids=h.probe_ids()).logits
    sharded = _load(out / "sharded_logits.safetensors")["logits"]
    torch.testing.assert_close(logits, sharded, rtol=0, atol=1e-5)
    words = ["w3", "w17", "<eos>"]  # the run's tokenizer came along
    assert AutoTokenizer.from_pretrained(final).convert_tokens_to_ids(words) == \
        h.tiny_tokenizer().convert_tokens_to_ids(words)
    trained = _full(out, "resumed")
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), trained[name]), name


@pytest.mark.slow
def test_offline_consolidation_without_a_process_group(scenario, tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.checkpoints import fsdp as sc

    out, _ = scenario
    model_dir = tmp_path / "model"  # what the trainer keeps in <run>/model: config and tokenizer
    h.tiny_config().save_pretrained(model_dir)
    h.tiny_tokenizer().save_pretrained(model_dir)
    ckpt = out / "run" / "checkpoints" / "step-000002"
    dest = sc.consolidate_offline(ckpt, model_dir, tmp_path / "consolidated")
    model = AutoModelForCausalLM.from_pretrained(dest)
    at_save = _full(out, "saved")
    assert set(at_save) <= {n for n, _ in model.named_parameters()} | {"lm_head.weight"}
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), at_save[name]), name


@pytest.mark.slow
def test_a_truncated_shard_is_caught_by_the_manifest(scenario, tmp_path) -> None:
    from engine.checkpoints import store as checkpoint
    from engine.checkpoints import fsdp as sc
    from engine.errors import UserError

    out, _ = scenario
    run = tmp_path / "run"
    shutil.copytree(out / "run", run)
    ckpt = run / "checkpoints" / "step-000002"
    shard = ckpt / "sharded" / "__1_0.distcp"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    assert "sharded/__1_0.distcp has the wrong size" in checkpoint.verify(ckpt, full=False)
    assert checkpoint.find_resume(run) is None  # never offered for resume
    with pytest.raises(UserError, match="not a usable checkpoint"):
        sc.consolidate_offline(ckpt, tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_rank0_killed_inside_a_sharded_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    from torch.multiprocessing import ProcessExitedException

    from engine.checkpoints import store as checkpoint

    monkeypatch.setenv("LLMW_CRASH_AT", "ckpt:before_manifest:2")  # the spawned ranks inherit it
    with pytest.raises(ProcessExitedException, match="exit code 137"):
        h.run_scenario(tmp_path, "crash")
    run = tmp_path / "run"
    (tmp,) = [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-step-000002")]
    assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in (tmp / "sharded").iterdir()}  # shards, no manifest
    assert not (tmp / "manifest.json").exists()
    assert checkpoint.find_resume(run).name == "step-000001"
    assert checkpoint.clean_tmp(run) == [tmp.name]


# ---- no processes needed -----------------------------------------------------------------------------

class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_index_unpickler_refuses_code() -> None:
    from engine.checkpoints.fsdp import _MetadataUnpickler

    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        _MetadataUnpickler(io.BytesIO(pickle.dumps(_Boom()))).load()


def test_check_layout_refuses_a_folder_that_is_not_sharded(tmp_path) -> None:
    from engine.errors import UserError
    from engine.checkpoints.fsdp import check_layout, is_sharded_checkpoint

    assert not is_sharded_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not a sharded checkpoint"):
        check_layout(tmp_path, 2)
    (tmp_path / "layout.json").write_text(json.dumps({"format": "other", "world_size": 2}))
    with pytest.raises(UserError, match="format 'other'"):
        check_layout(tmp_path, 2)


@pytest.mark.slow
def test_offline_consolidation_refuses_shards_of_another_model(scenario, tmp_path) -> None:
    from engine.checkpoints import fsdp as sc
    from engine.errors import UserError

    out, _ = scenario
    config = h.tiny_config()
    config.n_layer = 3  # a block the shards do not have
    config.save_pretrained(tmp_path / "model")
    h.tiny_tokenizer().save_pretrained(tmp_path / "model")
    with pytest.raises(UserError, match=r"does not hold a whole gpt2 model \(missing \['transformer\.h\.2"):
        sc.consolidate_offline(out / "run" / "checkpoints" / "step-000002", tmp_path / "model", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_gathered_peft_state_is_written_as_an_adapter_folder(tmp_path) -> None:
    """What consolidate writes for a LoRA run (its gathered state is the peft model's whole state dict)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2LMHeadModel

    from engine.checkpoints.fsdp import save_pretrained

    torch.manual_seed(0)
    base = GPT2LMHeadModel(h.tiny_config())
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_pretrained(model, state, tmp_path / "adapter", h.tiny_tokenizer())
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()
    loaded = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    ids = h.probe_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
