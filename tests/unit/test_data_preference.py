"""Preference pairs (engine/data/preference.py and formats.py's preference layout): every layout people bring
reads as the same pair, each side rendered exactly as apply_chat_template gives it with the answer alone
trained, long pairs cut at the prompt's start or dropped and counted, and batches served with TokenBlocks'
data-position contract. Also the preference techniques' options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import spec
from engine.data import formats
from engine.data.chat_templates import resolve
from engine.data.preference import ANSWER, PROMPT, pair_blocks, split_pairs
from engine.data.preference_rows import read_pair
from engine.data.sources import DataSource, iter_items
from engine.errors import UserError
from chat_helpers import train_bpe, write_jsonl
from preference_helpers import conversational, llama_factory, pairs

ROW = {"prompt": "Say four.", "chosen": "yes four", "rejected": "no two"}


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a transformers tokenizer
    return train_bpe(tmp_path_factory.mktemp("tok"))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_CACHE", str(tmp_path / "cache"))


def _read(tmp_path: Path, rows: list[dict]) -> formats.Pair:
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    source = DataSource(str(data), pairs=True)
    assert source.layout().format == "preference"
    return next(iter_items(source)).value


EXPECTED = formats.Pair(
    formats.Conversation(({"role": "user", "content": "Say four."}, {"role": "assistant", "content": "yes four"}),
                         (False, True)),
    formats.Conversation(({"role": "user", "content": "Say four."}, {"role": "assistant", "content": "no two"}),
                         (False, True)))


@pytest.mark.parametrize("layout", ["strings", "trl-conversational", "implicit-prompt", "llama-factory-sharegpt",
                                    "llama-factory-openai", "alpaca", "answers-repeat-the-prompt"])
def test_every_layout_reads_as_the_same_pair(tmp_path: Path, layout: str) -> None:
    conv = conversational([ROW])[0]
    rows = {
        "strings": ROW,
        "trl-conversational": conv,
        "implicit-prompt": {"chosen": conv["prompt"] + conv["chosen"], "rejected": conv["prompt"] + conv["rejected"]},
        "llama-factory-sharegpt": llama_factory([ROW])[0],
        "llama-factory-openai": {"conversations": conv["prompt"], "chosen": conv["chosen"][0],
                                 "rejected": conv["rejected"][0]},
        "alpaca": {"instruction": "Say four.", "input": "", "chosen": "yes four", "rejected": "no two"},
        # HuggingFaceH4/ultrafeedback_binarized: a prompt string, and answers that are whole conversations
        "answers-repeat-the-prompt": {"prompt": "Say four.", "chosen": conv["prompt"] + conv["chosen"],
                                      "rejected": conv["prompt"] + conv["rejected"]},
    }[layout]
    assert _read(tmp_path, [rows]) == EXPECTED


def test_system_and_multi_turn_prompts_are_context_not_trained(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                             {"from": "human", "value": "Say four."}],
           "system": "Be brief.", "chosen": {"from": "gpt", "value": "yes four"},
           "rejected": {"from": "gpt", "value": "no two"}}
    pair = _read(tmp_path, [row])
    assert [m["role"] for m in pair.chosen.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert pair.chosen.trained == (False, False, False, False, True)  # an earlier reply in the prompt is context


@pytest.mark.parametrize(("row", "words"), [
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "empty"),
    ({"prompt": "q", "chosen": "a", "rejected": 3}, "rejected"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "no prompt"),
])
def test_bad_pairs_name_what_is_wrong(row: dict, words: str) -> None:
    layout = formats.Layout("preference", {"chosen": "chosen", "rejected": "rejected"}
                            | ({"prompt": "prompt"} if "prompt" in row else {}))
    with pytest.raises(formats.BadRow, match=words):
        read_pair(layout, row)


def test_preference_rows_stay_refused_for_supervised_techniques(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", [ROW])
    with pytest.raises(UserError, match="preference technique"):
        DataSource(str(data)).layout()
    with pytest.raises(UserError, match="dpo or orpo"):
        DataSource(str(data), format="preference").layout()
    assert DataSource(str(data), format="chosen").layout().format == "chosen"  # SFT on the chosen answers, as asked


def test_each_side_is_rendered_as_apply_chat_template_and_only_the_answer_trains(tmp_path: Path, tok) -> None:
    rows = conversational(pairs(6))
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    blocks = pair_blocks(DataSource(str(data), pairs=True), tok, resolve("auto", tok), 256, val_fraction=0.0)
    ids, answer, real, pair = split_pairs(blocks.pairs_at(np.arange(6)))
    assert pair.tolist() == list(range(6))
    for k, row in enumerate(rows):
        for side, name in ((k, "chosen"), (6 + k, "rejected")):
            whole = list(tok.apply_chat_template(row["prompt"] + row[name], tokenize=True,
                                                 return_dict=True)["input_ids"])
            prompt = list(tok.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True,
                                                  return_dict=True)["input_ids"])
            assert ids[side][real[side]].tolist() == whole
            assert answer[side].nonzero().flatten().tolist() == list(range(len(prompt), len(whole)))
    # the example file is shared with nothing supervised: another key than the chosen answers' SFT file
    assert blocks.example_file.n_examples == 12


def test_long_pairs_lose_the_prompts_start_or_are_dropped_and_counted(tmp_path: Path, tok) -> None:
    rows = [dict(ROW), {"prompt": "sky " * 80, "chosen": "yes", "rejected": "no"},
            {"prompt": "q", "chosen": "blue " * 80, "rejected": "no"}, dict(ROW)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    blocks = pair_blocks(DataSource(str(data), pairs=True), tok, resolve("auto", tok), 63, val_fraction=0.0)
    lay = blocks.layout
    assert (lay.pairs, lay.truncated, lay.dropped) == (3, 1, 1) and lay.pair.tolist() == [0, 1, 3]
    ids, answer, real, _ = split_pairs(blocks.pairs_at(np.array([1])))
    assert int(real.sum(1).max()) == 64  # cut to seq_len + 1
    assert tok.decode(ids[0][answer[0]]).startswith("yes") and tok.decode(ids[1][answer[1]]).startswith("no")
    assert not bool(answer[:, 0].any())  # a prompt token at least stays before the answer


def test_batches_follow_the_data_position_contract(tmp_path: Path, tok) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", pairs(20))
    blocks = pair_blocks(DataSource(str(data), pairs=True), tok, resolve("auto", tok), 128, val_fraction=0.1, seed=3)
    assert (blocks.n_train_blocks, blocks.n_val_blocks) == (18, 2)
    first = blocks.train_batch(0, 0, 4)
    assert first.shape[:3] == (4, 2, 3)
    assert set(first[:, :, 1].unique().tolist()) <= {0, ANSWER, PROMPT}
    order = blocks.permutation(0)
    assert first[:, 0, 2, 0].tolist() == blocks.layout.pair[order[:4]].tolist()
    assert blocks.train_batch(0, 0, 4).equal(first)  # (seed, epoch) decide the order: a resume reads the same
    seam = blocks.train_batch(0, 16, 4)  # runs into epoch 1
    assert seam[2:, 0, 2, 0].tolist() == blocks.layout.pair[blocks.permutation(1)[:2]].tolist()
    assert blocks.advance(0, 16, 4) == (1, 2)
    val = list(blocks.val_batches(8))
    assert [b[:, 0, 2, 0].tolist() for b in val] == [blocks.layout.pair[18:].tolist()]


@pytest.mark.parametrize(("technique", "options", "words"), [
    ("dpo", {"beta": 0}, "options.beta"),
    ("dpo", {"finetuning": "prefix"}, "options.finetuning"),
    ("dpo", {"finetuning": "full", "lora_rank": 8}, "LoRA option"),
    ("dpo", {"finetuning": "full", "reference": "adapter"}, "copy\\\" or \\\"precomputed"),
    ("dpo", {"reference": "copy"}, "adapter disabled"),
    ("dpo", {"nll_on": "all"}, "unknown for dpo"),
    ("orpo", {"reference": "copy"}, "unknown for orpo"),
    ("orpo", {"nll_on": "prompt"}, "options.nll_on"),
    ("orpo", {"lora_rnak": 4}, "unknown for orpo"),
])
def test_bad_options_are_refused_naming_them(technique: str, options: dict, words: str) -> None:
    from engine.techniques.base import get

    s = spec.from_dict({"technique": technique, "model": {"path": "some/model"}, "options": options})
    with pytest.raises(UserError, match=words):
        get(technique).options(s)


def test_preference_techniques_default_to_a_small_learning_rate() -> None:
    for technique in ("dpo", "orpo"):
        assert spec.from_dict({"technique": technique, "model": {"path": "m"}}).train.lr == 5e-6
