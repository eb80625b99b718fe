"""Data checks: the book's numbers, token counts in every format, sampling, and bad data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine.estimate.data_size import (
    DEFAULT_BYTES_PER_TOKEN, TokenCount, check_data, count_tokens, data_rule, load_tokenizer,
)
from engine.errors import UserError
from tui.cli import main

WORDS = "the model learns from data tokens per parameter train small large text memory check".split()


def _lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with a BPE tokenizer trained on generated text (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("model")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(_lines(500), trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(dict(
        model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4)))
    return folder


def _count(n_tokens: int) -> TokenCount:
    return TokenCount(n_tokens, True, 0, "given", n_tokens * 4, 1)


def test_scratch_wants_20_tokens_per_parameter() -> None:
    one_b = 10**9
    check = data_rule("scratch", one_b, _count(20 * 10**9), tokens_per_step=10**6)
    assert check.required_tokens == 20 * 10**9 and check.verdict == "enough"
    low = data_rule("scratch", one_b, _count(2 * 10**9), tokens_per_step=10**6)
    assert low.verdict == "short" and low.supported_params == 10**8  # 2B tokens support a 100M model
    assert "100.0M" in low.advice
    assert data_rule("scratch", one_b, _count(10**8), tokens_per_step=10**6).verdict == "too little"
    # the planned budget is 20 tokens a parameter: 10 passes over 2B tokens
    assert low.projected_epochs == pytest.approx(10.0) and low.steps_per_epoch == 2000


def test_fine_tuning_wants_at_least_1e_5_times_the_parameters() -> None:
    one_b = 10**9
    enough = data_rule("full", one_b, _count(10_000), tokens_per_step=1000, max_steps=50)
    assert enough.required_tokens == 10_000 and enough.verdict == "enough"
    assert enough.projected_epochs == pytest.approx(5.0)
    little = data_rule("lora", one_b, _count(9_999), tokens_per_step=1000)
    assert little.verdict == "too little" and "retrieval" in little.advice and "LoRA" in little.advice
    assert little.projected_epochs is None  # no planned steps for a fine-tune


def _write_formats(tmp: Path, lines: list[str]) -> dict[str, tuple[Path, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp / "corpus.txt").write_text("\n".join(lines) + "\n")
    folder = tmp / "folder"
    folder.mkdir()
    half = len(lines) // 2
    (folder / "a.txt").write_text("\n".join(lines[:half]) + "\n")
    (folder / "b.txt").write_text("\n".join(lines[half:]) + "\n")
    (tmp / "rows.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(lines)))
    with (tmp / "rows.csv").open("w", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerows([i, t] for i, t in enumerate(lines))
    pq.write_table(pa.table({"id": list(range(len(lines))), "body": lines}), tmp / "rows.parquet")
    return {"txt": (tmp / "corpus.txt", None), "folder": (folder, None), "jsonl": (tmp / "rows.jsonl", "body"),
            "csv": (tmp / "rows.csv", "body"), "parquet": (tmp / "rows.parquet", "body")}


def test_exact_counts_in_every_format(tmp_path: Path, model_dir: Path) -> None:
    lines = _lines(300, seed=1)
    tok = load_tokenizer(str(model_dir))
    per_line = sum(len(tok.encode(t, add_special_tokens=False)) for t in lines)
    seen = []
    for kind, (path, column) in _write_formats(tmp_path, lines).items():
        progress: list[tuple[int, int]] = []
        c = count_tokens(str(path), tokenizer=tok, text_column=column, progress=lambda d, t: progress.append((d, t)))
        assert c.exact and c.error == 0, kind
        assert progress and progress[-1][0] == progress[-1][1], kind
        seen.append(c.tokens)
        # rows are tokenized one by one; text files in newline-ended pieces, which adds the newlines
        assert c.tokens == pytest.approx(per_line, rel=0.15), kind
        assert progress and progress[-1][0] == progress[-1][1], kind
    # jsonl, csv and parquet hold the same rows: their ids and an end-of-text token after each
    assert seen[2] == seen[3] == seen[4] == per_line + len(lines)


def test_large_data_is_sampled_with_an_error_bar(tmp_path: Path, model_dir: Path) -> None:
    lines = _lines(20000, seed=2)
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    tok = load_tokenizer(str(model_dir))
    exact = count_tokens(str(path), tokenizer=tok)
    sampled = count_tokens(str(path), tokenizer=tok, exact_limit=1000)
    assert not sampled.exact and sampled.error > 0 and "sampled" in sampled.method
    assert abs(sampled.tokens - exact.tokens) <= max(sampled.error, 0.02 * exact.tokens)
    rows = tmp_path / "big.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    exact_rows = count_tokens(str(rows), tokenizer=tok)
    sampled_rows = count_tokens(str(rows), tokenizer=tok, exact_limit=1000)
    assert not sampled_rows.exact
    assert sampled_rows.tokens == pytest.approx(exact_rows.tokens, rel=0.05)


def test_without_a_tokenizer_the_ratio_is_stated(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("x" * 4000)
    c = count_tokens(str(path))
    assert c.tokens == 4000 / DEFAULT_BYTES_PER_TOKEN and not c.exact
    assert "no tokenizer" in c.method and "4 bytes a token" in c.method


def test_check_data_uses_the_models_tokenizer(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(_lines(50)))
    check = check_data(str(path), technique="full", params=10**6, model=str(model_dir), tokens_per_step=100)
    assert check.exact and check.required_tokens == 10 and check.verdict == "enough"
    scratch = check_data(str(path), technique="scratch", params=10**6, model=None, tokens_per_step=100)
    assert not scratch.exact and scratch.verdict == "too little"


@pytest.mark.parametrize("content, column, needle", [
    (b"", None, "empty"),
    (b"caf\xe9 au lait\n", None, "not UTF-8"),
    (b"\x00\x01\x02binary", None, "not a text file"),
])
def test_bad_text_is_named(tmp_path: Path, content: bytes, column: str | None, needle: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=needle):
        count_tokens(str(path))


def test_structured_data_needs_its_text_column(tmp_path: Path) -> None:
    rows = tmp_path / "r.jsonl"
    rows.write_text(json.dumps({"id": 1, "review": "hello"}) + "\n")
    with pytest.raises(UserError, match="no column holds text or a conversation; set data.text_column"):
        count_tokens(str(rows))
    with pytest.raises(UserError, match="missing"):
        count_tokens(str(rows), text_column="missing")
    assert count_tokens(str(rows), text_column="review").bytes == 5
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="bad.jsonl"):
        count_tokens(str(tmp_path / "bad.jsonl"), text_column="body")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="bad.parquet"):
        count_tokens(str(tmp_path / "bad.parquet"), text_column="body")
    with pytest.raises(UserError, match="not found"):
        count_tokens(str(tmp_path / "nothing.jsonl"))


def test_cli_data_section(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(_lines(100)))
    code = main(["estimate", "--model", str(model_dir), "--technique", "full", "--dataset", str(path),
                 "--json", "--gpu-memory", "8GiB", "--max-steps", "10", "--batch-size", "2", "--seq-len", "32"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)["data"]
    for key in ("tokens", "tokens_per_param", "required_tokens", "verdict", "rule", "advice", "projected_epochs"):
        assert key in data
    assert data["tokens_per_step"] == 64 and data["projected_epochs"] == pytest.approx(640 / data["tokens"])
    assert main(["estimate", "--arch", "llama", "--technique", "scratch", "--dataset", str(path),
                 "--gpu-memory", "8GiB"]) == 0
    text = capsys.readouterr().out
    assert "tokens" in text and "Chinchilla" in text and "no tokenizer" in text
