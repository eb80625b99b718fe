"""LoRA on a tiny "pretrained" GPT-2 built here: the loss falls, only the adapter trains and the base
stays bit-identical, checkpoints and final/ hold the adapter alone (its size reported, a small share of
the base's), the adapter and the merged model load and agree; options and target detection; pause,
set_lr, rollback in a detached job; exact resume (RELIABILITY R2); the tiny preset runs on a local model."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from engine import spec

from engine.run import job

from engine import processes
from engine.runfolder import folder as runfolder
from engine.errors import UserError
from engine.serve.generate import generate
from engine.techniques import lora
from engine.run.trainer import Trainer
from finetune_helpers import base_model, corpus_and_tokenizer, finetune_spec, tensors
from run_helpers import control, events, launch, losses_by_step, wait_exit, wait_for, wait_step

pytestmark = pytest.mark.slow
PRESETS = Path(__file__).parents[2] / "presets"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    import torch

    threads = torch.get_num_threads()  # specs set threads = 1 in this (pytest's) process: put it back after
    tmp = tmp_path_factory.mktemp("lora")
    corpus, tokenizer = corpus_and_tokenizer(tmp)
    yield corpus, base_model("gpt2", tokenizer, tmp / "base")
    torch.set_num_threads(threads)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _base_weights(peft_model) -> dict:
    """The wrapped model's own weights under the base checkpoint's names (LoRA tensors left out)."""
    out = {}
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            out[name.replace(".base_layer.", ".")] = value
    return out


def test_lora_trains_the_adapter_alone_and_reports_its_size(base, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    corpus, model_dir = base
    s = finetune_spec("lora", model_dir, corpus, train={"lr": 1e-2}, options={"lora_rank": 8, "merge": True})
    run = job.create(s, tmp_path / "runs")
    trainer = Trainer(run, s)
    assert trainer.run_job() == 0
    losses = list(losses_by_step(events(run)).values())
    assert len(losses) == 30 and _mean(losses[-5:]) < _mean(losses[:5]) - 0.8, losses

    # the base is bit-identical after training; the trained model holds exactly the base's tensors
    start = tensors(model_dir / "model.safetensors")
    trained = _base_weights(trainer.prep.model)
    assert set(start) <= set(trained)
    assert all(torch.equal(start[k], trained[k]) for k in start)
    n_total, n_trainable = trainer.prep.n_params()
    assert 0 < n_trainable < n_total / 10

    # checkpoints and final/ hold the adapter only; the adapter changed between them
    ckpt = run / "checkpoints" / "step-000010"
    assert not list(ckpt.glob("model*.safetensors")) and (ckpt / lora.ADAPTER_CONFIG).is_file()
    early, final = tensors(ckpt / lora.ADAPTER_WEIGHTS), tensors(run / "final" / lora.ADAPTER_WEIGHTS)
    assert early.keys() == final.keys() and all("lora_" in k for k in final)
    assert all(not torch.equal(early[k], final[k]) for k in final)
    assert not (run / "final" / "model.safetensors").exists()
    import json

    assert json.loads((run / "final" / lora.ADAPTER_CONFIG).read_text())["target_modules"] == ["c_attn"]  # detected

    # the adapter's size on disk: in the done event and the final message, a small share of the base's
    done = events(run, "done")[-1]
    adapter_bytes = (run / "final" / lora.ADAPTER_WEIGHTS).stat().st_size
    assert done["adapter_bytes"] == adapter_bytes and done["base_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert adapter_bytes < done["base_bytes"] / 10
    assert "adapter" in runfolder.read_status(run)["message"] and "% of the base" in done["summary"]

    # final/ loads with peft on the base, or with transformers alone; merged/ is a plain model; all agree
    ids = torch.tensor([[5, 17, 40, 9, 33]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()(ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "final").eval()
        with_adapter = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "final" / lora.MERGED).eval()(ids).logits
        direct = AutoModelForCausalLM.from_pretrained(run / "final").eval()(ids).logits  # transformers finds the base
    assert not torch.allclose(plain, with_adapter, atol=1e-3)
    assert torch.allclose(merged, with_adapter, atol=1e-4) and torch.allclose(direct, with_adapter, atol=1e-5)
    text, source = generate(run, "the cat", max_new_tokens=6)
    assert source == "final" and text
    text, source = generate(run, "the cat", checkpoint_ref="10", max_new_tokens=6)
    assert source == "step-000010" and text


def test_options_are_validated_and_targets_detected_per_architecture(base, tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    corpus, model_dir = base

    def opts(**o):
        return lora.options(finetune_spec("lora", model_dir, corpus, options=o))

    assert opts() == {**lora.DEFAULTS, "lora_alpha": 32}  # alpha defaults to twice the rank
    with pytest.raises(UserError, match="did you mean 'lora_rank'"):
        opts(lora_rnak=8)
    with pytest.raises(UserError, match="options.lora_rank"):
        opts(lora_rank=0)
    with pytest.raises(UserError, match="options.lora_dropout"):
        opts(lora_dropout=1.5)
    with pytest.raises(UserError, match="options.lora_targets"):
        opts(lora_targets="q_proj")

    with pytest.raises(UserError, match="options.lora_alpha: a positive number"):
        opts(lora_alpha=0)

    # `llm-wizard train` refuses bad options before a run folder exists
    from tui.cli import main

    spec_file = tmp_path / "bad.toml"
    spec_file.write_text(spec.to_toml(finetune_spec("lora", model_dir, corpus, options={"rank": 8})))
    assert main(["train", str(spec_file), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "options.rank: unknown for lora" in capsys.readouterr().err and not (tmp_path / "runs").exists()

    gpt2 = AutoModelForCausalLM.from_pretrained(model_dir)
    assert lora.target_modules(gpt2, []) == ["c_attn"]
    assert lora.target_modules(gpt2, ["c_fc"]) == ["c_fc"]
    with pytest.raises(UserError, match="q_proj is not a Linear layer of this gpt2 model; choose from c_attn, c_fc"):
        lora.target_modules(gpt2, ["q_proj"])
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert lora.target_modules(llama, []) == ["q_proj", "v_proj"]
    gpt2.config.model_type = "an-architecture-peft-has-no-list-for"
    assert lora.target_modules(gpt2, []) == ["c_attn", "c_fc", "c_proj"]  # every Linear in the blocks, no head


def _metrics_after_ack(run: Path, cid: str) -> list[dict]:
    evs = events(run)
    at = next((i for i, e in enumerate(evs) if e["type"] == "control_ack" and e["id"] == cid), len(evs))
    return [e for e in evs[at:] if e["type"] == "metrics"]


def test_pause_set_lr_and_rollback_in_a_detached_lora_job(base, tmp_path: Path) -> None:
    corpus, model_dir = base
    s = finetune_spec("lora", model_dir, corpus, train={"max_steps": 5000, "lr": 1e-2},
                      checkpoint={"every": 10, "keep": 10})
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.02)
    try:
        wait_step(run, 12, timeout=120)
        ack = control(run, "pause")
        at = ack["step"]
        time.sleep(0.8)
        status = runfolder.read_status(run)
        assert ack["ok"] and status["state"] == "paused" and status["step"] == at

        ack = control(run, "set_lr", factor=0.5)
        assert ack["ok"] and ack["lr"] == pytest.approx(0.5 * 1e-2)  # constant schedule after warm-up
        ack = control(run, "resume")
        assert ack["step"] == at
        first = wait_for(lambda: _metrics_after_ack(run, ack["id"]), what="a step after resume")[0]
        assert first["step"] == at + 1 and first["train/lr"] == pytest.approx(0.5 * 1e-2)

        ack = control(run, "rollback", step=10)
        assert ack["ok"] and ack["branch"] == 1 and ack["step"] == 10, ack
        first = wait_for(lambda: _metrics_after_ack(run, ack["id"]), what="a step after rollback")[0]
        assert first["step"] == 11 and first["branch"] == 1
        assert (run / "checkpoints" / "step-000010" / lora.ADAPTER_WEIGHTS).is_file()

        assert control(run, "stop")["ok"]
        assert wait_exit(pid, timeout=60) == 0
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid)
    newest = sorted((run / "checkpoints").glob("step-*-b1"))[-1]
    assert not list(newest.glob("model*.safetensors")) and (newest / lora.ADAPTER_WEIGHTS).is_file()
    text, source = generate(run, "the cat", max_new_tokens=6)  # from the newest checkpoint: base + adapter
    assert source == newest.name and text


def _interrupted(s: spec.RunSpec, runs: Path) -> dict[int, float]:
    short = spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": 10}})
    run = job.create(short, runs)
    assert Trainer(run, short).run_job() == 0
    (run / runfolder.SPEC).write_text(spec.to_toml(s))
    before = runfolder.read_events(run)[1]
    assert Trainer(run, s, resume=True).run_job() == 0
    return losses_by_step(runfolder.read_events(run, before)[0])


def test_lora_resume_is_exact_with_dropout(base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, model_dir = base
    s = finetune_spec("lora", model_dir, corpus, train={"max_steps": 20, "lr": 1e-2},
                      options={"lora_dropout": 0.1}, checkpoint={"every": 10, "keep": 2})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    straight = losses_by_step(events(run))
    after = _interrupted(s, tmp_path / "runs")
    assert sorted(after) == list(range(11, 21))
    assert all(after[k] == straight[k] for k in after), {k: (after[k], straight[k]) for k in after}

    # negative control: a resume that does not load the adapter differs, so the check can fail
    monkeypatch.setattr(lora, "load", lambda prep, folder: None)
    skipped = _interrupted(s, tmp_path / "runs")
    assert any(skipped[k] != straight[k] for k in skipped)


def test_tiny_preset_runs_on_a_local_model(base, tmp_path: Path) -> None:
    corpus, model_dir = base
    s = spec.load(PRESETS / "lora-tiny.toml", [f"model.path={model_dir}", f"data.path={corpus}", "train.max_steps=4",
                                               "eval.every=2", "checkpoint.every=2", "train.warmup_steps=1"])
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    final = run / "final"
    assert (final / lora.ADAPTER_WEIGHTS).is_file() and (final / lora.MERGED / "model.safetensors").is_file()
    assert events(run, "done")[-1]["adapter_bytes"] > 0


def test_lora_learns_responses_from_jsonl_with_the_prompt_masked(base, tmp_path: Path) -> None:
    import json
    import random

    from engine.data.pack import PackedBlocks
    from run_helpers import WORDS

    corpus, model_dir = base
    rng = random.Random(0)
    rows = []
    for _ in range(600):  # the response repeats the prompt's words backwards: learnable, masked prompt
        words = [rng.choice(WORDS) for _ in range(3)]
        rows.append({"q": " ".join(words), "a": " ".join(reversed(words))})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = finetune_spec("lora", model_dir, data, train={"lr": 1e-2, "max_steps": 20},
                      data={"prompt_column": "q", "response_column": "a", "val_fraction": 0.05})
    run = job.create(s, tmp_path / "runs")
    trainer = Trainer(run, s)
    assert trainer.run_job() == 0
    assert isinstance(trainer.prep.data, PackedBlocks)  # batches carry the loss mask; prompts are not trained on
    losses = list(losses_by_step(events(run)).values())
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 0.5, losses


def test_train_merge_flag_writes_a_merged_model(base, tmp_path: Path) -> None:
    import signal as signals

    from tui.cli import main

    corpus, model_dir = base
    spec_file = tmp_path / "lora.toml"
    spec_file.write_text(spec.to_toml(finetune_spec("lora", model_dir, corpus, train={"max_steps": 3},
                                                    checkpoint={"every": 0})))
    handlers = {s: signals.getsignal(s) for s in (signals.SIGINT, signals.SIGTERM, signals.SIGHUP)}
    try:  # --foreground trains in this process (and installs its signal handlers: put them back after)
        assert main(["train", str(spec_file), "--merge", "--foreground", "--runs-dir", str(tmp_path / "runs")]) == 0
    finally:
        for s, handler in handlers.items():
            signals.signal(s, handler)
    run = next((tmp_path / "runs").iterdir())
    assert "merge = true" in (run / runfolder.SPEC).read_text()
    assert (run / "final" / lora.MERGED / "model.safetensors").is_file()
