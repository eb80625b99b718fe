"""The trainer's FSDP path (engine/run/distributed/trainer.py -> engine/checkpoints/fsdp.py) on two gloo CPU processes:
accelerate's own FSDP2 preparation, forced on (it runs FSDP only on accelerators; tests/support/sharded_helpers.py),
checkpoints of every rank's shards, final/ consolidated, and a resume that continues exactly. Two spawns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import sharded_helpers as h
from engine.checkpoints import store as checkpoint
from engine.run import job
from engine.run.distributed import launch as launch_config
from engine.errors import UserError
from run_helpers import assert_generate_reads, copy_stopped_at, events, make_corpus, tiny_spec

FSDP = {"num_processes": 2, "strategy": "fsdp"}


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_fsdp_run_saves_shards_consolidates_final_and_resumes_exactly(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.checkpoints import fsdp as sc

    s = tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": 6}, checkpoint={"every": 3, "keep": 5},
                  distributed=FSDP)
    run = job.create(s, tmp_path / "runs")
    assert h.run_trainer(run) == [{"code": 0, "sharded": True}] * 2
    names = [c.name for c in checkpoint.list_checkpoints(run)]
    assert names == ["step-000003", "step-000006"]
    for name in names:
        ckpt = run / "checkpoints" / name
        assert json.loads((ckpt / "layout.json").read_text())["world_size"] == 2
        assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "rng.pt", "trainer_state.json"} <= \
            set(json.loads((ckpt / "manifest.json").read_text())["files"])
        assert not (ckpt / "model.safetensors").exists() and not (ckpt / "optimizer.pt").exists()
    done = events(run, "done")[-1]
    assert done["state"] == "done" and "consolidated from 2 shards" in done.get("summary", "")
    losses = [e["train/loss"] for e in events(run, "metrics")]
    assert len(losses) == 6 and losses[-1] < losses[0]

    final = _weights(run / "final")  # a normal transformers folder: from_pretrained reads it
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.detach(), final["transformer.h.0.attn.c_attn.weight"])
    offline = sc.consolidate_offline(run / "checkpoints" / "step-000006", run / "model", tmp_path / "offline")
    for k, v in _weights(offline).items():  # the last checkpoint holds exactly the final weights
        assert torch.equal(v, final[k]), k
    # generate reads a sharded checkpoint by consolidating it
    assert_generate_reads(run, "step-000006", final)

    again = copy_stopped_at(run, tmp_path / "again", "step-000006")  # as if stopped after step 3
    assert h.run_trainer(again, resume=True) == [{"code": 0, "sharded": True}] * 2
    resumed = [e for e in events(again, "state") if e.get("resumed_from")]
    assert resumed and resumed[-1]["resumed_from"] == "step-000003"
    for k, v in _weights(again / "final").items():
        assert torch.equal(v, final[k]), k


def test_fsdp_refused_without_cuda_and_its_config_is_fsdp2(tmp_path: Path) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin

    s = tiny_spec(make_corpus(tmp_path, lines=10), distributed=FSDP)
    with pytest.raises(UserError, match="fsdp needs CUDA GPUs") as e:
        launch_config.check_supported(s, cuda=False)
    assert e.value.field == "distributed.strategy"
    launch_config.check_supported(s, cuda=True)
    cfg = yaml.safe_load(launch_config.write_config(tmp_path, s, cuda=True).read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    env = h.fsdp_env(s)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        plugin = FullyShardedDataParallelPlugin()  # what each rank builds from accelerate launch's FSDP_* variables
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT" and plugin.auto_wrap_policy is not None
