"""Prompt tuning (listing 5.3) on a tiny GPT-2 built from a config: only the virtual tokens learn, the base
stays bit-identical, the loss falls on text and on labelled rows (loss on the label only), and final/
loads with PeftModel.from_pretrained and generates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine import spec

from engine.run import job

from engine.runfolder import folder as runfolder
from engine.run.trainer import Trainer
from run_helpers import losses_by_step, tiny_spec
from technique_models import corpus_and_tokenizer, gpt2, tensors

# A random GPT-2 with the usual 0.02 init gives a near-uniform output that a prompt cannot move; a larger
# init makes attention to the virtual tokens matter (measured: loss 6.4 -> 5.8 in 30 steps at lr 0.1).
INIT = 0.2


PRESETS = Path(__file__).parents[2] / "presets"
SHORT = ["train.max_steps=4", "train.warmup_steps=1", "eval.every=2", "checkpoint.every=2", "log.every=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    import torch

    threads = torch.get_num_threads()  # specs set threads = 1 in this (pytest's) process: put it back after
    tmp = tmp_path_factory.mktemp("pt")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
    corpus, tokenizer = corpus_and_tokenizer(tmp)
    folder = gpt2(tokenizer, tmp / "base", init=INIT)
    mp.undo()
    yield corpus, folder
    torch.set_num_threads(threads)


def _train(s, runs: Path) -> tuple[Path, Trainer, dict[int, float]]:
    run = job.create(s, runs)
    trainer = Trainer(run, s)
    assert trainer.run_job() == 0, [e for e in runfolder.read_events(run)[0] if e["type"] == "error"]
    return run, trainer, losses_by_step(runfolder.read_events(run)[0])


def _mean(losses: dict[int, float], steps: range) -> float:
    return sum(losses[k] for k in steps) / len(steps)


def test_text_virtual_tokens_learn_base_unchanged_final_generates(base: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.serve.generate import generate
    from engine.techniques import prompt_tuning

    corpus, folder = base
    s = tiny_spec(corpus, technique="prompt-tuning", model={"path": str(folder)},
                  train={"lr": 0.1, "max_steps": 30}, options={"num_virtual_tokens": 8, "init_text": "the cat sat"})
    run, trainer, losses = _train(s, tmp_path / "runs")
    assert _mean(losses, range(26, 31)) < _mean(losses, range(1, 6)) - 0.2, losses

    # only the virtual tokens trained: 8 x 32 of them; the base's weights are bit-identical to the saved ones
    ready = next(e for e in runfolder.read_events(run)[0] if e.get("trainable_params"))
    assert ready["trainable_params"] == 8 * 32
    saved = tensors(folder)
    base_now = {k.removeprefix("base_model."): v for k, v in trainer.prep.model.state_dict().items()
                if k.startswith("base_model.")}
    assert saved.keys() <= base_now.keys()
    assert all(torch.equal(saved[k], base_now[k]) for k in saved)

    # the virtual tokens moved away from their text initialisation
    fresh = prompt_tuning.build(s, AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
    initial = fresh.prompt_encoder["default"].embedding.weight.detach()
    trained = tensors(run / "final", "adapter_model.safetensors")["prompt_embeddings"]
    assert trained.shape == initial.shape and (trained - initial).abs().max() > 0.1

    # final/ is a peft adapter + tokenizer: PeftModel.from_pretrained reads it and generates
    assert json.loads((run / "final" / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    ids = tokenizer("the cat", return_tensors="pt")["input_ids"]
    model.base_model.generation_config.use_cache = False  # see prompt_tuning.load_inference
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    seq = ids  # greedy by hand: the virtual tokens once in front of the whole sequence, every step
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == seq.tolist()
    text, source = generate(run, "the cat", max_new_tokens=40)  # a cached decode failed past ~13 tokens
    assert source == "final" and text
    text, source = generate(run, "the cat", checkpoint_ref="20", max_new_tokens=5)  # a checkpoint: prompt only
    assert source == "step-000020" and text


def test_labelled_rows_train_the_label_only(base: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = base
    rng = random.Random(0)
    words = "the dog sat on a mat and ran to big red house".split()
    rows = []
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
        if rng.random() < 0.5:
            text += " cat"
        rows.append({"text": text, "label": "yes" if "cat" in text else "no"})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = tiny_spec(data, technique="prompt-tuning", model={"path": str(folder)},
                  data={"path": str(data), "label_column": "label", "val_fraction": 0.1},
                  train={"lr": 0.1, "max_steps": 30}, eval={"every": 30, "batches": 4},
                  options={"num_virtual_tokens": 4, "init_text": "Classify if the text has a cat:"})
    run, trainer, losses = _train(s, tmp_path / "runs")
    batch = trainer.prep.data.train_batch(0, 0, 4)
    assert batch.dim() == 3 and 0 < int(batch[:, 1].sum()) < batch[:, 1].numel() // 2  # few trained targets
    # the label ("yes"/"no", a few tokens + eos out of ~20 a row) is all the loss sees (measured 6.0 -> 5.3)
    assert _mean(losses, range(26, 31)) < _mean(losses, range(1, 6)) - 0.4, losses
    assert any(e["type"] == "eval" for e in runfolder.read_events(run)[0])


@pytest.mark.parametrize("options,message", [({"num_virtual_tokens": 0}, "num_virtual_tokens"),
                                             ({"virtual_tokens": 8}, "unknown")])
def test_bad_options_fail_as_user_errors(base: tuple[Path, Path], tmp_path: Path, options: dict,
                                         message: str) -> None:
    corpus, folder = base
    s = tiny_spec(corpus, technique="prompt-tuning", model={"path": str(folder)}, options=options)
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 2
    error = next(e for e in runfolder.read_events(run)[0] if e["type"] == "error")
    assert error["kind"] == "user" and message in error["message"]


def test_tiny_preset_runs(base: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, folder = base
    s = spec.load(PRESETS / "prompt-tuning-tiny.toml", [f"model.path={folder}", f"data.path={corpus}", *SHORT])
    run, _, losses = _train(s, tmp_path / "runs")
    assert sorted(losses) == [1, 2, 3, 4] and (run / "final" / "adapter_model.safetensors").is_file()
    assert spec.load(PRESETS / "prompt-tuning-bloomz.toml").options["num_virtual_tokens"] == 8  # the listing's
