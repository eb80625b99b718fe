"""The preflight batch finder in a real Trainer (RELIABILITY O1, O6), on the CPU.

LLMW_FAULT=oom_over:<tokens> is a device of that size: every training micro-batch of more tokens raises
torch.OutOfMemoryError, in the probes and in the training steps alike. A tiny scratch run asks for
micro-batch 8 with seq_len 32 on a 160-token device: the finder must pick 4 x 2 (largest fitting 5, the
margin, then a divisor of 8), train exactly as a run configured 4 x 2 from the start would (same losses:
the probes leave RNG and data position alone), record the choice in an event, the status and the
checkpoint, and resume with it. Without the finder the same run dies of out-of-memory at the first step.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.run import batch_finder

from engine.run import job

from engine.run import oom

from engine.runfolder import folder as runfolder
from engine.checkpoints import store as ck
from engine import spec as spec_mod
from engine.errors import UserError
from engine.run.trainer import Trainer
from run_helpers import in_process_trainer, make_corpus, tiny_spec

BUDGET = "oom_over:160"  # tokens: micro-batches of up to 5 x 32 fit


@pytest.fixture
def fresh_accelerate():
    with in_process_trainer():
        yield


def _spec(corpus: Path, **train: Any) -> spec_mod.RunSpec:
    # dropout makes every step draw random numbers: a probe that moved the RNG would change the losses
    return tiny_spec(corpus, model={"dropout": 0.1},
                     train={"batch_size": 8, "grad_accum": 1, "max_steps": 4, "warmup_steps": 0, **train},
                     checkpoint={"every": 2, "keep": 2})


def _run(s: spec_mod.RunSpec, runs: Path, *, resume: Path | None = None) -> tuple[int, Trainer]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    t = Trainer(resume or job.create(s, runs), s, resume=resume is not None)
    return t.run_job(), t


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in runfolder.read_events(run)[0] if e["type"] == kind]


def _losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["train/loss"] for e in _events(run, "metrics")}


def test_O1_preflight_picks_the_micro_batch_trains_the_same_and_resumes_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate) -> None:
    corpus = make_corpus(tmp_path, lines=400)
    monkeypatch.setenv("LLMW_FAULT", BUDGET)
    s = _spec(corpus, find_batch="on")
    code, t = _run(s, tmp_path / "found")
    assert code == 0, _events(t.run, "error")
    alert = [a for a in _events(t.run, "alert") if a["kind"] == "batch_size"]
    assert len(alert) == 1 and alert[0]["severity"] == "info"
    a = alert[0]
    assert (a["micro_batch"], a["grad_accum"], a["effective"], a["largest_fitting"]) == (4, 2, 8, 5)
    assert a["probes"][0] == 8 and len(a["probes"]) <= 4  # binary search from the effective batch down
    assert "micro-batch 4 x 2" in a["message"] and "largest that fit was 5" in a["message"] \
        and "spec asked for 8 x 1" in a["message"]
    status = runfolder.read_status(t.run)
    assert (status["micro_batch"], status["grad_accum"], status["state"]) == (4, 2, "done")
    saved = json.loads((ck.lineage(t.run)[0].path / "trainer_state.json").read_text())
    assert (saved["batch_size"], saved["grad_accum"], saved["batch_choice"]["micro_batch"]) == (4, 2, 4)

    # the same losses as a run configured 4 x 2 from the start, on an unlimited device: the probes
    # left the RNG, the data position and the weights alone, and the effective batch is the same
    monkeypatch.delenv("LLMW_FAULT")
    code, direct = _run(_spec(corpus, batch_size=4, grad_accum=2, find_batch="off"), tmp_path / "direct")
    assert code == 0 and _losses(direct.run) == _losses(t.run) and len(_losses(t.run)) == 4
    # negative control: probes that leave the RNG where they took it train differently (the check can fail)
    monkeypatch.setenv("LLMW_FAULT", BUDGET)
    with monkeypatch.context() as m:
        m.setattr(batch_finder, "set_rng_state", lambda state: None)
        code, drifted = _run(s, tmp_path / "drifted")
    assert code == 0 and drifted.batch_size == 4 and _losses(drifted.run) != _losses(direct.run)

    # resume (two more steps) on the same small device: the checkpoint's choice, no new probing
    longer = spec_mod.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": 6}})
    code, resumed = _run(longer, tmp_path, resume=t.run)
    assert code == 0, _events(t.run, "error")
    assert (resumed.batch_size, resumed.grad_accum, resumed.step) == (4, 2, 6)
    assert resumed.batch_choice is not None and resumed.batch_choice["largest_fitting"] == 5
    assert len([a for a in _events(t.run, "alert") if a["kind"] == "batch_size"]) == 1


def test_O1_without_the_finder_the_same_run_runs_out_of_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate) -> None:
    """Negative control: the fake device is real to the trainer, and "auto" does not probe on the CPU."""
    monkeypatch.setenv("LLMW_FAULT", BUDGET)
    code, t = _run(_spec(make_corpus(tmp_path, lines=400)), tmp_path / "runs")  # find_batch = "auto"
    assert code == 3 and t.step == 0
    assert not [a for a in _events(t.run, "alert") if a["kind"] == "batch_size"]
    assert "out of memory at micro-batch 8" in _events(t.run, "error")[0]["message"]


def test_O6_nothing_fits_fails_with_the_estimate_and_options(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate) -> None:
    monkeypatch.setenv("LLMW_FAULT", "oom_over:16")  # not even one sequence of 32 tokens
    code, t = _run(_spec(make_corpus(tmp_path, lines=400), find_batch="on"), tmp_path / "runs")
    assert code == 3 and t.step == 0 and t.state == "failed"
    message = _events(t.run, "error")[0]["message"]
    assert "out of memory even at micro-batch 1 of 8" in message
    assert "estimated tensors of a step at micro-batch 1: " in message and "MiB" in message  # the estimator's
    assert "with the CUDA context and the allocator's margin: 1.0 GiB" in message
    for option in ("gradient_checkpointing", "shorter train.seq_len (now 32)", "more GPUs", "smaller model.size"):
        assert option in message, option
    assert "Traceback" not in message


def test_O1_margin_is_memory_headroom_when_the_probe_measures() -> None:
    """On CUDA a probe returns what its step needs: the largest batch under margin x memory is kept as is."""
    need = {b: 2_000 + 100 * b for b in range(1, 33)}  # weights and states, plus activations per sequence
    choice = oom.find_micro_batch(lambda b: need[b], 16, limit_bytes=int(0.9 * 4_000))
    assert (choice.largest_fitting, choice.micro_batch, choice.grad_accum) == (16, 16, 1)
    choice = oom.find_micro_batch(lambda b: need[b], 32, limit_bytes=int(0.9 * 4_000))  # 2000 + 100 b <= 3600
    assert (choice.largest_fitting, choice.micro_batch, choice.grad_accum) == (16, 16, 2)
    assert choice.peaks[16] == 3_600 and "needs" in choice.message()


def test_O1_when_the_finder_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def trainer(setting: str, device: str = "cuda", resume: bool = False, world: int = 1) -> Any:
        return SimpleNamespace(spec=SimpleNamespace(train=SimpleNamespace(find_batch=setting)), resume=resume,
                               world=world, batch_size=8,
                               accelerator=SimpleNamespace(device=SimpleNamespace(type=device)))

    verdict = ["fits"]

    def estimate(t: Any, micro_batch: int, free: int) -> Any:
        if verdict[0] is None:
            return None
        return SimpleNamespace(gpus=[SimpleNamespace(verdict=verdict[0], needed_bytes=75 * 2**30)])

    monkeypatch.setattr(batch_finder, "cuda_available_bytes", lambda device: 80 * 2**30)
    monkeypatch.setattr(batch_finder, "estimate_for", estimate)
    assert batch_finder.reason_to_run(trainer("auto")) is None  # the estimate fits: leave the spec's batch
    verdict[0] = "tight"
    assert "75.0 GiB is tight for the 80.0 GiB" in batch_finder.reason_to_run(trainer("auto"))
    verdict[0] = None
    assert "no memory estimate" in batch_finder.reason_to_run(trainer("auto"))
    assert batch_finder.reason_to_run(trainer("auto", device="cpu")) is None  # no OOM to find on the CPU
    assert batch_finder.reason_to_run(trainer("on", device="cpu")) == "train.find_batch = on"
    assert batch_finder.reason_to_run(trainer("off")) is None
    assert batch_finder.reason_to_run(trainer("on", resume=True)) is None  # the checkpoint holds the choice
    assert batch_finder.reason_to_run(trainer("on", world=2)) is None


def test_O1_find_batch_setting_validates_and_leaves_the_fingerprint(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=50)
    base = tiny_spec(corpus)
    assert base.train.find_batch == "auto"
    data = base.to_dict()
    spec_mod.set_value(data, "train.find_batch=on")  # the CLI's --set: a bare word
    on = spec_mod.from_dict(data)
    assert on.train.find_batch == "on" and on.fingerprint() == base.fingerprint()  # a resume may change it
    assert 'find_batch = "on"' in spec_mod.to_toml(on)
    with pytest.raises(UserError, match="train.find_batch: unknown value 'maybe'"):
        tiny_spec(corpus, train={"find_batch": "maybe"})
    with pytest.raises(UserError, match="one process only"):
        tiny_spec(corpus, train={"find_batch": "on"}, distributed={"num_processes": 2})


def test_O1_auto_asks_the_estimator_for_each_technique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate behind "auto" is made for every technique's spec (no estimate would mean always probing)."""
    from transformers import GPT2Config

    from finetune_helpers import finetune_spec

    corpus = make_corpus(tmp_path, lines=50)
    GPT2Config(vocab_size=320, n_positions=128, n_embd=64, n_layer=2, n_head=2).save_pretrained(tmp_path / "base")
    gpu = [80 * 2**30]
    monkeypatch.setattr(batch_finder, "cuda_available_bytes", lambda device: gpu[0])

    def trainer(s: spec_mod.RunSpec) -> Any:
        return SimpleNamespace(spec=s, resume=False, batch_size=s.train.batch_size, grad_accum=s.train.grad_accum,
                               prep=SimpleNamespace(model=SimpleNamespace(config=GPT2Config(vocab_size=256))),
                               accelerator=SimpleNamespace(device=SimpleNamespace(type="cuda")))

    totals = {}
    for technique in ("full", "lora", "qlora", "prompt-tuning"):
        est = batch_finder.estimate_for(trainer(finetune_spec(technique, tmp_path / "base", corpus)), 8, gpu[0])
        assert est is not None, technique
        totals[technique] = est.peak_bytes
    assert totals["lora"] < totals["full"]
    scratch = trainer(tiny_spec(corpus, train={"batch_size": 8}))
    assert batch_finder.estimate_for(scratch, 8, gpu[0]).model.vocab_size == 256
    assert batch_finder.reason_to_run(scratch) is None  # fits easily in 80 GiB
    gpu[0] = 2**30  # less than the estimate's CUDA context alone
    assert "is over for the 1.0 GiB" in batch_finder.reason_to_run(scratch)
