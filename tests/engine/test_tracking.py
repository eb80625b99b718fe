"""Tracking and evaluation on tiny in-process runs: TensorBoard files that tensorboard's own reader reads back with
the losses of events.jsonl; a tracker that always fails changes nothing but one alert; early stopping and the best
checkpoint on a run whose eval loss rises, with final/ holding the best weights; eval.prompts' samples."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from engine import spec
from engine.run import job
from engine.run.trainer import Trainer
from engine.runfolder import folder as runfolder
from run_helpers import events, in_process_trainer, losses_by_step, make_corpus, tiny_spec
from track_helpers import BoomTracker, overfit_corpus

pytestmark = pytest.mark.slow


def _train(s: spec.RunSpec, runs: Path) -> tuple[Path, int]:
    run = job.create(s, runs)
    with in_process_trainer():
        code = Trainer(run, s).run_job()
    return run, code


def test_tensorboard_files_read_back_with_the_losses_of_the_events(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 12}, eval={"every": 4, "batches": 2},
                  checkpoint={"every": 0})
    run, code = _train(s, tmp_path / "runs")
    assert code == 0
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr", "eval/loss", "train/tok_per_s"} <= set(acc.Tags()["scalars"])
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    evs = events(run)
    loss = losses_by_step(evs)
    assert sorted(tb_loss) == sorted(loss) == list(range(1, 13))
    assert all(tb_loss[k] == pytest.approx(v, rel=1e-6) for k, v in loss.items())  # float32 in the file
    tb_eval = {e.step: e.value for e in acc.Scalars("eval/loss")}
    assert tb_eval == pytest.approx({e["step"]: e["eval/loss"] for e in evs if e["type"] == "eval"}, rel=1e-6)
    assert "run/state/text_summary" in acc.Tags()["tensors"]  # state changes as text


def test_a_failing_tracker_changes_neither_losses_nor_speed_and_says_so_once(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.track import trackers

    corpus = make_corpus(tmp_path, lines=600)
    base = {"train": {"max_steps": 40}, "log": {"every": 1, "tensorboard": False}, "checkpoint": {"every": 0}}
    plain, code = _train(tiny_spec(corpus, **base), tmp_path / "plain")
    assert code == 0
    monkeypatch.setitem(trackers.FACTORIES, "wandb", lambda run, s: BoomTracker())
    BoomTracker.calls = 0
    boom, code = _train(tiny_spec(corpus, **{**base, "log": {**base["log"], "trackers": ["wandb"]}}),
                        tmp_path / "boom")
    assert code == 0
    assert losses_by_step(events(boom)) == losses_by_step(events(plain))  # bit for bit
    tracker_alerts = [e for e in events(boom, "alert") if e["kind"] == "tracker"]
    assert len(tracker_alerts) == 1 and "wandb failed" in tracker_alerts[0]["message"]
    assert "switched off" in tracker_alerts[0]["message"]
    assert BoomTracker.calls == 1  # the first event; once off it is never called again (not even close)
    assert runfolder.read_status(boom)["state"] == "done"

    def median_ms(run: Path) -> float:
        return statistics.median(e["train/step_ms"] for e in events(run, "metrics")[5:])

    # the tracker runs on its own thread: the loop's step time stays within noise of the plain run's
    assert median_ms(boom) < 1.5 * median_ms(plain) + 5


def test_early_stop_keeps_the_best_checkpoint_and_final_holds_its_weights(tmp_path: Path) -> None:
    import torch

    # training sentences, validation digits it never sees: the eval loss falls, then rises as it fits the sentences
    s = tiny_spec(overfit_corpus(tmp_path), data={"val_fraction": 0.1}, train={"max_steps": 60, "lr": 1e-2},
                  eval={"every": 3, "patience": 3, "batches": 2},
                  checkpoint={"every": 3, "keep": 2, "final": "best"})
    run, code = _train(s, tmp_path / "runs")
    assert code == 0
    evs = events(run)
    evals = [e for e in evs if e["type"] == "eval"]
    best = min(evals, key=lambda e: e["eval/loss"])
    assert evals[-1]["eval/loss"] > best["eval/loss"]  # it rose
    done = evs[-1]
    assert done["type"] == "done" and done["state"] == "done" and done["early_stop"] is True
    assert done["step"] < 60 and done["step"] == evals[-1]["step"]
    assert evals[-1]["since_best"] == 3 and [e["step"] for e in evals[-4:]][0] == best["step"]
    name = f"step-{best['step']:06d}"
    assert done["best"] == name and done["final_from"] == name
    assert done["best_eval_loss"] == pytest.approx(best["eval/loss"])
    assert any(e["type"] == "alert" and e["kind"] == "early_stop" for e in evs)
    # rotation (keep = 2) deleted older checkpoints but never the best
    assert (run / "checkpoints" / name).is_dir()
    assert any(name not in e["deleted"] for e in evs if e["type"] == "checkpoint")
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert name in kept and len(kept) == 3
    marked = [e for e in evs if e["type"] == "checkpoint" and e.get("best")]
    assert marked and marked[-1]["name"] == name
    from transformers import AutoModelForCausalLM

    from engine.serve.generate import load_for_inference

    final = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    best_w = load_for_inference(run, name)[0].state_dict()
    last_w = load_for_inference(run, kept[-1])[0].state_dict()
    assert final.keys() == best_w.keys()
    assert all(torch.equal(final[k], best_w[k]) for k in final)
    assert not all(torch.equal(final[k], last_w[k]) for k in final)  # the best is not the last


def test_eval_prompts_give_greedy_samples_in_the_eval_events(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 8},
                  eval={"every": 4, "batches": 1, "prompts": ["the cat", "a dog"], "sample_tokens": 6},
                  checkpoint={"every": 0}, log={"tensorboard": False})
    run, code = _train(s, tmp_path / "runs")
    assert code == 0
    evals = events(run, "eval")
    assert [e["step"] for e in evals] == [4, 8]
    for e in evals:
        assert [x["prompt"] for x in e["samples"]] == ["the cat", "a dog"]
        assert all(isinstance(x["text"], str) and 0 < len(x["text"].encode()) <= 6 * 4 for x in e["samples"])
    # greedy: the same weights give the same text (the run's own final/ reproduces the last sample)
    from engine.run.evaluation import samples
    from engine.serve.generate import load_for_inference

    model, tokenizer, _ = load_for_inference(run)
    again = samples(model, tokenizer, ["the cat", "a dog"], chat=False, max_new_tokens=6, device="cpu")
    assert again == evals[-1]["samples"]


def test_chat_runs_sample_the_reply_through_the_chat_template(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from chat_helpers import qwen2_model, train_bpe
    from engine.run.evaluation import chat_run, prompt_ids, samples

    tokenizer = train_bpe(tmp_path / "tok")
    model = AutoModelForCausalLM.from_pretrained(qwen2_model(tmp_path / "m", tokenizer))
    ids = prompt_ids(tokenizer, "What colour is the sky?", chat=True)
    rendered = tokenizer.decode(ids)
    assert rendered.startswith("<|im_start|>system") and rendered.endswith("<|im_start|>assistant\n")
    assert prompt_ids(tokenizer, "What colour is the sky?", chat=False) == tokenizer(
        "What colour is the sky?", add_special_tokens=False)["input_ids"]
    (got,) = samples(model, tokenizer, ["What colour is the sky?"], chat=True, max_new_tokens=5, device="cpu")
    x = torch.tensor([ids])
    want = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=5,
                          pad_token_id=tokenizer.pad_token_id)[0, len(ids):]
    stop = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    cut = next((i for i, t in enumerate(want.tolist()) if t in stop), len(want))
    assert got["text"] == tokenizer.decode(want[:cut], skip_special_tokens=True)
    assert chat_run({"template": "chatml"}) and not chat_run({"template": None}) and not chat_run(None)
