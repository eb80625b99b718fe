"""DeepSpeed ZeRO-2/3 (distributed.strategy zero2/zero3; engine/checkpoints/zero.py) on two gloo CPU processes,
started by the real `llm-wizard train` path (supervisor -> `accelerate launch` with a DEEPSPEED config ->
DistributedTrainer): the run trains what DDP trains, its checkpoints hold DeepSpeed's per-rank partitions inside
the atomic manifest, final/ is a normal transformers folder, and a resume continues exactly.

The run tests need the optional deepspeed package (pip install -e '.[test,deepspeed]'); without it they are
skipped with that reason, and the refusal test below checks what the user gets instead."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import spec

from engine.checkpoints import store as checkpoint

from engine.run.distributed import launch as launch_config
from engine.errors import UserError
from run_helpers import (assert_generate_reads, copy_stopped_at, events, launch, make_corpus, resume, tiny_spec,
                         wait_exit)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="the deepspeed package is not installed "
                                     "(pip install 'llm-wizard[deepspeed]')")


def _spec(tmp: Path, strategy: str) -> spec.RunSpec:
    return tiny_spec(make_corpus(tmp, lines=400), train={"max_steps": 6, "grad_accum": 2},  # DeepSpeed accumulates
                     checkpoint={"every": 3, "keep": 5},
                     distributed={"num_processes": 2, "strategy": strategy})


def _final(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


def _train(s: spec.RunSpec, runs: Path) -> Path:
    run, pid = launch(s, runs)
    code = wait_exit(pid, 300)
    assert code == 0, (code, [e for e in events(run) if e["type"] in ("error", "done")])
    return run


@pytest.fixture(scope="module")
def ddp_final(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same tiny run with DDP: what ZeRO must reproduce (same data order, same optimizer math)."""
    tmp = tmp_path_factory.mktemp("ddp")
    return _final(_train(_spec(tmp, "ddp"), tmp / "runs"))


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_zero_run_trains_like_ddp_saves_partitions_consolidates_and_resumes_exactly(
        tmp_path: Path, strategy: str, ddp_final: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    run = _train(_spec(tmp_path, strategy), tmp_path / "runs")
    cfg = yaml.safe_load((run / launch_config.CONFIG).read_text())
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == int(strategy[-1])
    starting = [e for e in events(run, "state") if e.get("world_size")]
    assert starting[0]["world_size"] == 2 and starting[0]["backend"] == "gloo" and starting[0]["strategy"] == strategy
    losses = [e["train/loss"] for e in events(run, "metrics")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    done = events(run, "done")[-1]
    assert done["state"] == "done" and "consolidated from 2 shards" in done.get("summary", "")

    names = [c.name for c in checkpoint.list_checkpoints(run)]
    assert names == ["step-000003", "step-000006"]
    for name in names:
        ckpt = run / "checkpoints" / name
        assert json.loads((ckpt / "layout.json").read_text()) == {"format": "deepspeed-zero",
                                                                  "stage": int(strategy[-1]), "world_size": 2}
        files = set(json.loads((ckpt / "manifest.json").read_text())["files"])
        # each rank's optimizer partition (and, under ZeRO-3, its parameter partition) is in the manifest
        assert {f"zero/state/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= files
        if strategy == "zero3":
            assert {f"zero/state/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= files
        assert {"rng.pt", "trainer_state.json", "layout.json"} <= files and checkpoint.verify(ckpt) is None
        assert not (ckpt / "model.safetensors").exists() and not (ckpt / "optimizer.pt").exists()

    final = _final(run)  # whole tensors (ZeRO-3 gathered them), the same as DDP's within float rounding
    assert sorted(final) == sorted(ddp_final)
    for k, v in ddp_final.items():
        assert final[k].shape == v.shape and torch.allclose(final[k], v, atol=1e-5), k
    ready = [e for e in events(run, "state") if "params" in e][0]  # counted before DeepSpeed partitions them
    assert ready["params"] == ready["trainable_params"] == sum(v.numel() for v in final.values())
    model = AutoModelForCausalLM.from_pretrained(run / "final")  # a normal transformers folder
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.detach(), final["transformer.h.0.attn.c_attn.weight"])
    assert (run / "model" / "config.json").is_file()  # generate's config + tokenizer, from the engine's module
    # generate reads a ZeRO checkpoint by consolidating it
    assert_generate_reads(run, "step-000006", final)

    again = copy_stopped_at(run, tmp_path / "again", "step-000006")  # as if stopped after step 3
    assert wait_exit(resume(again), 300) == 0
    resumed = [e for e in events(again, "state") if e.get("resumed_from")]
    assert resumed and resumed[-1]["resumed_from"] == "step-000003"
    for k, v in _final(again).items():
        assert torch.equal(v, final[k]), k
    again_losses = [e["train/loss"] for e in events(again, "metrics")][-3:]
    assert again_losses == losses[-3:]


@pytest.mark.slow
@needs_deepspeed
def test_zero_checkpoint_refuses_another_layout_or_stage_and_foreign_files(tmp_path: Path) -> None:
    from engine.checkpoints import zero as zc

    folder = tmp_path / "step-000003"
    folder.mkdir()
    (folder / "layout.json").write_text(json.dumps({"format": "deepspeed-zero", "stage": 3, "world_size": 2}))
    zc.check_layout(folder, 2, 3)
    with pytest.raises(UserError, match="saved by 2 processes and this run has 4") as e:
        zc.check_layout(folder, 4, 3)
    assert e.value.field == "distributed.num_processes"
    with pytest.raises(UserError, match="set distributed.strategy = zero3"):
        zc.check_layout(folder, 2, 2)
    (folder / "layout.json").write_text(json.dumps({"format": "dcp-fsdp2", "world_size": 2}))
    with pytest.raises(UserError, match="format 'dcp-fsdp2'"):
        zc.check_layout(folder, 2, 3)
    with pytest.raises(UserError, match="not a usable checkpoint"):  # no manifest: DeepSpeed never unpickles it
        zc._check_written_by_this_run(folder)


def test_zero_refused_without_deepspeed_and_configured_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    corpus = make_corpus(tmp_path, lines=10)
    for strategy in ("zero2", "zero3"):
        with pytest.raises(UserError) as e:  # before any process starts (the spec itself is machine-free)
            launch_config.check_supported(tiny_spec(corpus, distributed={"num_processes": 2, "strategy": strategy}))
        message = str(e.value)
        assert e.value.field == "distributed.strategy" and f"{strategy} needs DeepSpeed, which is not installed" \
            in message, message
        assert "llm-wizard[deepspeed]" in message and "fsdp" in message and "ddp" in message
    launch_config.check_supported(tiny_spec(corpus, distributed={"strategy": "zero3"}))  # one process: unused
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    s = tiny_spec(corpus, distributed={"num_processes": 2, "strategy": "zero3"}, train={"grad_accum": 2})
    launch_config.check_supported(s, cuda=False)  # DeepSpeed runs over gloo on the CPU too
    monkeypatch.setattr(importlib.util, "find_spec", real)
    cfg = yaml.safe_load(launch_config.write_config(tmp_path, s, cuda=False).read_text())
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["num_processes"] == 2
    ds = cfg["deepspeed_config"]
    assert ds["zero_stage"] == 3 and ds["gradient_accumulation_steps"] == 2 and ds["zero3_init_flag"] is False
    assert ds["deepspeed_multinode_launcher"] == "standard"  # several machines: torchrun per node, not pdsh


def test_estimator_proposes_fsdp_never_zero_for_a_model_that_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model too big for one GPU gets FSDP (with its per-GPU estimate) and never a DeepSpeed strategy, which
    may not be installed; the wizard's own spec and request use ddp for several processes."""
    from engine.estimate.memory import EstimateRequest, estimate
    from tui import wizard

    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    est = estimate(EstimateRequest(arch="llama", size="7B", technique="full", batch_size=1, seq_len=512))
    flags = [s.flags for s in est.suggestions]
    assert any("--strategy fsdp" in f for f in flags), flags
    assert not any("zero" in f for f in flags), flags
    choices = wizard.Choices(num_processes=2)
    assert wizard.estimate_request(choices).strategy == "ddp"


@pytest.mark.slow
@needs_deepspeed
def test_zero3_controls_act_on_both_ranks_and_a_killed_rank_ends_the_run(tmp_path: Path) -> None:
    """pause, set_lr and rollback through DeepSpeed's engine (rollback loads its partitions on both ranks): the
    step after the rollback repeats the first branch's numbers exactly; SIGKILL of rank 1 ends the run."""
    import signal

    from engine import processes
    from engine.runfolder import folder as runfolder
    from run_helpers import control, wait_for, wait_step

    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 400}, checkpoint={"every": 5, "keep": 20},
                  distributed={"num_processes": 2, "strategy": "zero3"})
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.2, env={"LLM_WIZARD_RANK_PROBE": "1"})

    def probe(rank: int) -> list[dict[str, Any]]:
        path = run / "ranks" / f"rank-{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def rows(cmd: str) -> list[dict[str, Any]]:
        def both() -> list[dict[str, Any]] | None:
            found = [[r for r in probe(rank) if r.get("cmd") == cmd] for rank in (0, 1)]
            return [f[-1] for f in found] if all(found) else None
        return wait_for(both, 120, f"both ranks handling {cmd}")

    try:
        wait_step(run, 7)
        assert control(run, "pause")["ok"]
        paused = rows("pause")
        assert paused[0]["step"] == paused[1]["step"] and all(r["paused"] for r in paused), paused
        assert control(run, "set_lr", factor=0.5)["ok"]
        lr = rows("set_lr")
        assert lr[0]["multiplier"] == lr[1]["multiplier"] == 0.5 and lr[0]["lr"] == lr[1]["lr"], lr
        assert control(run, "rollback", step=5)["ok"]
        back = rows("rollback")
        assert back[0]["step"] == back[1]["step"] == 5 and back[0]["position"] == back[1]["position"], back
        assert back[0]["multiplier"] == 1.0  # the checkpoint's schedule, before the set_lr
        assert control(run, "resume")["ok"]
        wait_for(lambda: [e for e in events(run, "metrics") if e["branch"] == 1 and e["step"] >= 7], 120,
                 "two steps on the new branch")
        rank1 = probe(1)[-1]["pid"]
        os.kill(rank1, signal.SIGKILL)
        assert wait_exit(pid, 180) != 0
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    first = {e["step"]: e for e in events(run, "metrics") if e["branch"] == 0}
    second = {e["step"]: e for e in events(run, "metrics") if e["branch"] == 1}
    for step in (6, 7):  # the same weights, optimizer state, data position and LR: the same numbers
        assert (first[step]["train/loss"], first[step]["train/lr"]) == \
            (second[step]["train/loss"], second[step]["train/lr"]), (first[step], second[step])
    errors = [e for e in events(run, "error") if e.get("kind") == "rank"]
    assert errors and errors[0]["rank"] == 1 and "SIGKILL" in errors[0]["message"], events(run, "error")
    newest = checkpoint.find_resume(run)
    assert newest is not None and checkpoint.verify(newest.path) is None


@pytest.mark.slow
@needs_deepspeed
def test_zero3_lora_adapter_matches_ddp(tmp_path: Path) -> None:
    """LoRA under ZeRO-3: the frozen base is partitioned too; final/ holds the adapter DDP trains."""
    import torch
    from safetensors.torch import load_file

    from finetune_helpers import base_model, corpus_and_tokenizer, finetune_spec

    corpus, tokenizer = corpus_and_tokenizer(tmp_path)
    model = base_model("llama", tokenizer, tmp_path / "base")
    adapters = {}
    for strategy in ("ddp", "zero3"):
        s = finetune_spec("lora", model, corpus, train={"max_steps": 4, "lr": 3e-3}, checkpoint={"every": 2},
                          distributed={"num_processes": 2, "strategy": strategy}, options={"lora_rank": 4})
        run = _train(s, tmp_path / strategy)
        adapters[strategy] = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert sorted(adapters["zero3"]) == sorted(adapters["ddp"]) and adapters["ddp"]
    for k, v in adapters["ddp"].items():
        assert torch.allclose(adapters["zero3"][k], v, atol=1e-6), k
    assert any(v.abs().max() > 0 for k, v in adapters["zero3"].items() if "lora_B" in k)  # it trained
