"""`llm-wizard data`, `estimate --spec` and `train`'s data preflight on the same chat spec: one data path, the
same numbers, and bad data refused before a run folder exists."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from chat_helpers import CONVERSATIONS, many, qwen2_model, train_bpe, write_jsonl
from engine import spec as spec_mod
from tui.cli import main


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny Qwen2-style chat model (ChatML template, no generation markers) and 30 conversations."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = train_bpe(root / "tok")
    model = qwen2_model(root / "model", tokenizer)
    data = write_jsonl(root / "chat.jsonl", [{"messages": c} for c in many(30)])
    return SimpleNamespace(root=root, model=model, data=data)


def spec_file(folder: Path, chat: SimpleNamespace, data: Path | None = None, technique: str = "full",
              **data_settings: str) -> Path:
    d = {"technique": technique, "name": "chat", "data": {"path": str(data or chat.data), **data_settings},
         "train": {"seq_len": 128, "batch_size": 2, "max_steps": 2}}
    d["model"] = {"arch": "gpt2", "size": "tiny"} if technique == "scratch" else {"path": str(chat.model)}
    path = folder / "spec.toml"
    path.write_text(spec_mod.to_toml(spec_mod.from_dict(d)))
    return path


def data_json(capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert main(["data", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_data_json_shows_examples_exactly_as_trained(tmp_path: Path, chat: SimpleNamespace,
                                                     capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoTokenizer

    got = data_json(capsys, str(spec_file(tmp_path, chat)), "--show", "2")
    for key in ("format", "examples", "tokens", "trained_tokens", "truncated", "dropped", "shown", "template",
                "skipped_rows", "blocks", "added_tokens"):
        assert key in got, key
    assert got["format"] == "messages" and got["examples"] == 30 and got["template"] == "model"
    assert 0 < got["trained_tokens"] < got["tokens"] and len(got["shown"]) == 2
    tokenizer = AutoTokenizer.from_pretrained(chat.model)
    first = got["shown"][0]
    assert first["ids"] == list(tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=True, return_dict=False))
    assert first["text"] == tokenizer.decode(first["ids"])
    # the mask covers the two replies (with their end-of-turn token) and nothing of the system or user turns
    trained = tokenizer.decode([i for i, m in zip(first["ids"], first["mask"]) if m])
    assert "The sky is blue on a clear day.<|im_end|>" in trained and "At night it looks black" in trained
    assert "colour" not in trained and "short sentence" not in trained and "And at night" not in trained

    # the chat markers are shown as special tokens (added tokens marked special, not only the named ones)
    from engine.data.prepare import first_shown
    from engine.data.sources import DataSource

    (preview,) = first_shown(DataSource(str(chat.data)), tokenizer, 1)
    assert preview.ids == first["ids"] and preview.mask == first["mask"]
    marked = {p for p, special in zip(preview.pieces, preview.special) if special}
    assert marked == {"<|im_start|>", "<|im_end|>"}

    capsys.readouterr()
    assert main(["data", str(spec_file(tmp_path, chat)), "--show", "1"]) == 0
    text = capsys.readouterr().out  # not a terminal: plain text, the trained parts marked
    assert "messages" in text and "trained tokens" in text
    assert "{+The sky is blue on a clear day.<|im_end|>" in text


def test_estimate_data_and_the_trainer_count_the_same(tmp_path: Path, chat: SimpleNamespace,
                                                      capsys: pytest.CaptureFixture) -> None:
    from engine.data.prepare import source_blocks
    from engine.models.pretrained import load_pretrained

    spec_path = spec_file(tmp_path, chat, train_on="last_assistant")
    shown = data_json(capsys, str(spec_path), "--show", "0")
    assert main(["estimate", "--spec", str(spec_path), "--gpu-memory", "1GiB", "--json"]) == 0
    estimated = json.loads(capsys.readouterr().out)["data"]
    assert estimated["exact"] and (estimated["tokens"], estimated["trained_tokens"]) == \
        (shown["tokens"], shown["trained_tokens"])
    # the same data options given on the command line instead of in the spec
    assert main(["estimate", "--model", str(chat.model), "--dataset", str(chat.data), "--seq-len", "128",
                 "--train-on", "last_assistant", "--gpu-memory", "1GiB", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["tokens"] == shown["tokens"]
    # the trainer: what a technique's setup() gets for this spec, with the model's own tokenizer
    spec = spec_mod.load(spec_path)
    model, tokenizer = load_pretrained(str(chat.model), "model.path", model=spec.model)
    ctx = SimpleNamespace(spec=spec, progress=lambda message: None, should_stop=lambda: False)
    report = source_blocks(ctx, tokenizer, model).report
    assert (report.tokens, report.trained_tokens, report.examples) == \
        (shown["tokens"], shown["trained_tokens"], shown["examples"])
    # a different setting gives a different count, in both
    everything = data_json(capsys, str(spec_path), "--set", "data.train_on=all", "--show", "0")
    assert everything["trained_tokens"] > shown["trained_tokens"]


def test_data_command_errors_are_one_line_exit_2(tmp_path: Path, chat: SimpleNamespace,
                                                 capsys: pytest.CaptureFixture) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVERSATIONS[1]}, {"messages": "hello"}])
    assert main(["data", str(spec_file(tmp_path, chat, bad))]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "Traceback" not in err
    # scratch reads the conversations as the trainer does (D12): masked replies, a tokenizer that learned them
    got = data_json(capsys, str(spec_file(tmp_path, chat, technique="scratch")), "--show", "1")
    assert got["format"] == "messages" and got["template"] == "plain" and 0 < got["trained_tokens"] < got["tokens"]
    assert "### Response:" in got["shown"][0]["text"]


def test_data_command_on_plain_text_from_scratch(tmp_path: Path, chat: SimpleNamespace,
                                                 capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "notes.txt"
    corpus.write_text("the sky is blue <|endoftext|> and the river is long\n" * 40)
    spec_path = spec_file(tmp_path, chat, corpus, technique="scratch")
    text = spec_path.read_text().replace('kind = "bpe"', 'kind = "byte"')
    spec_path.write_text(text)
    got = data_json(capsys, str(spec_path), "--show", "1")
    # byte tokenizer: every byte a token, an end-of-text after the document; "<|endoftext|>" written in the
    # text stays text
    assert got["format"] == "text" and got["tokens"] == len(corpus.read_bytes()) + 1
    assert "<|endoftext|>" in got["shown"][0]["text"]


def test_train_refuses_a_bad_chat_file_before_any_run_folder(tmp_path: Path, chat: SimpleNamespace,
                                                            capsys: pytest.CaptureFixture) -> None:
    bad = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS]
                      + [{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}])
    assert main(["train", str(spec_file(tmp_path, chat, bad))]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4" in err and "on_bad_row" in err and "Traceback" not in err
    assert not Path(os.environ["LLM_WIZARD_RUNS"]).exists()


def test_check_reads_every_container_and_skips_when_asked(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.data.prepare import check
    from engine.data.sources import DataSource
    from engine.errors import UserError

    table = pa.table({"prompt": ["What is 2+2?", "Name a colour."], "completion": ["4", "Blue."]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    found = check(DataSource(str(tmp_path / "pairs.parquet")))
    assert (found.format, found.rows, found.skipped) == ("prompt_response", 2, 0)
    rows = [{"messages": c} for c in CONVERSATIONS] + [{"messages": []}]
    bad = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(UserError, match=f"{bad}:4"):
        check(DataSource(str(bad)))
    skipped = check(DataSource(str(bad), on_bad_row="skip"))
    assert (skipped.rows, skipped.skipped) == (3, 1)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="file is empty"):
        check(DataSource(str(tmp_path / "empty.txt")))
