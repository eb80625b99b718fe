"""Token files (built once, cached by content, stoppable) and the blocks served from them
(RELIABILITY D6, R5, G3 for data preparation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engine.data.token_cache as tc
from engine.data.corpus import read_text
from engine.errors import UserError
from engine.paths import cache_dir
from engine.data.token_cache import PreparationStopped, TokenBlocks, TokenFile, build_token_file, load_token_file
from engine.data.tokenizer_train import train_tokenizer
from data_helpers import make_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    return make_corpus(tmp_path / "corpus", n_files=5, words_per_file=600)


def expected_stream(files: list[Path], tok: Any) -> list[int]:
    ids: list[int] = []
    for path in files:
        ids += tok(read_text(path), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


def tokens_of(token_file: TokenFile) -> list[int]:
    return np.fromfile(token_file.path, dtype=token_file.dtype).tolist()


@pytest.mark.parametrize("kind", ["bpe", "byte", "char"])
def test_token_file_is_each_document_then_eos(corpus: list[Path], kind: str) -> None:
    tok = train_tokenizer(corpus, kind, 300 if kind == "bpe" else 40)  # type: ignore[arg-type]
    token_file = build_token_file(corpus, tok)
    assert tokens_of(token_file) == expected_stream(corpus, tok)
    assert token_file.dtype == "uint16"
    assert token_file.path.parent == cache_dir() / "tokens"
    meta = json.loads(token_file.sidecar.read_text())
    assert meta["n_tokens"] == token_file.n_tokens and meta["n_documents"] == len(corpus)
    assert load_token_file(token_file.path) == token_file


def test_special_token_text_inside_a_document_is_not_eos(tmp_path: Path) -> None:
    doc = tmp_path / "code.py"
    doc.write_text('SEP = "<|endoftext|>"\n', encoding="utf-8")
    for kind in ("bpe", "byte"):
        tok = train_tokenizer([doc], kind, 300)  # type: ignore[arg-type]
        ids = tokens_of(build_token_file([doc], tok))
        assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id


def test_second_build_is_a_cache_hit(corpus: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    tok = train_tokenizer(corpus, "bpe", 300)
    calls = []
    real = tc._encoder
    monkeypatch.setattr(tc, "_encoder", lambda t: calls.append(1) or real(t))
    first = build_token_file(corpus, tok)
    mtime = first.path.stat().st_mtime_ns
    second = build_token_file(corpus, tok)
    assert second == first and len(calls) == 1  # the second call encoded nothing
    assert first.path.stat().st_mtime_ns == mtime
    corpus[1].write_text("an edited document\n", encoding="utf-8")
    third = build_token_file(corpus, tok)
    assert len(calls) == 2 and third.fingerprint != first.fingerprint
    other_tok = train_tokenizer(corpus, "byte", 0)
    assert build_token_file(corpus, other_tok).fingerprint != third.fingerprint


def test_incomplete_cache_entry_is_rebuilt(corpus: list[Path]) -> None:
    tok = train_tokenizer(corpus, "byte", 0)
    first = build_token_file(corpus, tok)
    with first.path.open("r+b") as handle:
        handle.truncate(10)  # as if the disk filled up after the sidecar was written
    again = build_token_file(corpus, tok)
    assert again == first and tokens_of(again) == expected_stream(corpus, tok)


def test_progress_counts_bytes_and_stop_leaves_nothing(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = train_tokenizer(corpus, "byte", 0)
    monkeypatch.setattr(tc, "_batch_bytes", lambda: 2000)  # several batches from a small corpus
    monkeypatch.setattr(tc, "PIECE_BYTES", 1000)
    seen: list[tuple[int, int]] = []
    out = tmp_path / "cache"
    build_token_file(corpus, tok, cache_dir=out, progress=lambda done, total: seen.append((done, total)))
    total = sum(f.stat().st_size for f in corpus)
    assert len(seen) > 3 and seen[-1] == (total, total) and seen.count((total, total)) == 1
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and {t for _, t in seen} == {total}

    polls = []  # the corpus was hashed above, so every poll here is between two batches
    stopped = tmp_path / "stopped"
    with pytest.raises(PreparationStopped):
        build_token_file(corpus, tok, cache_dir=stopped, should_stop=lambda: polls.append(1) or len(polls) >= 2)
    assert len(polls) == 2 and list(stopped.glob("*")) == []  # no partial file a later run could trust


def test_bad_file_in_corpus_leaves_nothing(corpus: list[Path], tmp_path: Path) -> None:
    tok = train_tokenizer(corpus, "byte", 0)
    binary = tmp_path / "corpus" / "zz.txt"
    binary.write_bytes(b"text then \0 a NUL")
    out = tmp_path / "cache"
    with pytest.raises(UserError, match=f"not a text file: NUL byte at offset 10 in {binary}"):
        build_token_file([*corpus, binary], tok, cache_dir=out)
    assert list(out.iterdir()) == []


def test_large_vocabulary_uses_uint32(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["[UNK]"] = len(vocab)
    rust = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="[UNK]")
    doc = tmp_path / "big.txt"
    doc.write_text("w1 w69999 w65536\n", encoding="utf-8")
    token_file = build_token_file([doc], tok)
    assert token_file.dtype == "uint32"
    assert tokens_of(token_file) == [1, 69999, 65536, 70000]


def fake_token_file(tmp_path: Path, n: int) -> TokenFile:
    path = tmp_path / "fake.bin"
    np.arange(n, dtype=np.uint16).tofile(path)
    return TokenFile(path, n, "uint16", "fake")


def test_too_short_dataset_message(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        TokenBlocks(fake_token_file(tmp_path, 64), seq_len=64)
    assert str(caught.value).startswith("dataset has 64 tokens, need at least seq_len+1 = 65 for one training sequence")
    assert caught.value.field == "seq_len"
    with pytest.raises(UserError, match="need at least 2 x \\(seq_len\\+1\\) = 130 for one training and one validation"):
        TokenBlocks(fake_token_file(tmp_path, 100), seq_len=64)
    with pytest.raises(UserError, match="val_fraction 0.99 leaves 10 training tokens, fewer than seq_len\\+1 = 17"):
        TokenBlocks(fake_token_file(tmp_path, 1000), seq_len=16, val_fraction=0.99)
    with pytest.raises(UserError, match="val_fraction must be in \\[0, 1\\), got 1.0"):
        TokenBlocks(fake_token_file(tmp_path, 1000), seq_len=16, val_fraction=1.0)
    blocks = TokenBlocks(fake_token_file(tmp_path, 65), seq_len=64, val_fraction=0.0)
    assert (blocks.n_train_blocks, blocks.n_val_blocks) == (1, 0)


def test_blocks_are_consecutive_tokens_and_val_is_apart(tmp_path: Path) -> None:
    blocks = TokenBlocks(fake_token_file(tmp_path, 1000), seq_len=16, val_fraction=0.1)
    assert (blocks.train_tokens, blocks.val_tokens) == (900, 100)
    assert (blocks.n_train_blocks, blocks.n_val_blocks) == (56, 6)
    batch = blocks.train_batch(0, 0, 8)
    assert batch.shape == (8, 17) and str(batch.dtype) == "torch.int64"
    assert ((batch[:, 1:] - batch[:, :-1]) == 1).all()  # each row is 17 consecutive tokens
    assert (batch[:, 0] % 16 == 0).all() and int(batch.max()) < 900  # block starts, inside train
    val = list(blocks.val_batches(4))
    assert [v.shape[0] for v in val] == [4, 2]
    firsts = [int(x) for v in val for x in v[:, 0]]
    assert firsts == [900 + 16 * i for i in range(6)]  # in order, after the training region


def test_an_epoch_visits_every_block_once_and_resume_is_exact(tmp_path: Path) -> None:
    token_file = fake_token_file(tmp_path, 300)
    blocks = TokenBlocks(token_file, seq_len=10, val_fraction=0.05, seed=7)
    n = blocks.n_train_blocks
    assert n == 28
    epoch = position = 0
    rows = []
    for _ in range(20):  # 20 batches of 3 cross into the next epoch(s)
        rows.append(blocks.train_batch(epoch, position, 3))
        epoch, position = blocks.advance(epoch, position, 3)
    starts = [int(r[0]) // 10 for batch in rows for r in batch]
    assert sorted(starts[:n]) == list(range(n))  # one full epoch: each block exactly once
    assert starts[:n] != sorted(starts[:n])  # shuffled
    assert starts[n : 2 * n] != starts[:n]  # a new order each epoch
    assert (epoch, position) == divmod(60, n)

    # A fresh object (a resumed process) at a saved position serves the same batches.
    resumed = TokenBlocks(token_file, seq_len=10, val_fraction=0.05, seed=7)
    epoch, position = 0, 0
    for _ in range(11):
        epoch, position = blocks.advance(epoch, position, 3)
    for k in range(11, 20):
        assert resumed.train_batch(epoch, position, 3).equal(rows[k])
        epoch, position = resumed.advance(epoch, position, 3)
    other_seed = TokenBlocks(token_file, seq_len=10, val_fraction=0.05, seed=8)
    assert not other_seed.train_batch(0, 0, 8).equal(blocks.train_batch(0, 0, 8))
    assert blocks.epochs_done(1, n // 2) == pytest.approx(1 + (n // 2) / n)


def test_batch_larger_than_the_dataset_wraps_epochs(tmp_path: Path) -> None:
    blocks = TokenBlocks(fake_token_file(tmp_path, 65), seq_len=16, val_fraction=0.0)
    assert blocks.n_train_blocks == 4
    batch = blocks.train_batch(0, 0, 10)
    assert batch.shape == (10, 17)
    assert sorted(int(r[0]) for r in batch[:4]) == [0, 16, 32, 48]
    assert blocks.advance(0, 0, 10) == (2, 2)
    with pytest.raises(UserError, match="batch size must be at least 1"):
        blocks.train_batch(0, 0, 0)


def test_stop_is_honoured_quickly_on_a_slow_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokenizer at 1 MB/s: batches shrink to a fraction of a second, so a stop lands quickly."""
    import time

    files = []
    for i in range(3):
        path = tmp_path / f"big{i}.txt"
        path.write_text("a line of text for a slow tokenizer\n" * 28_000, encoding="utf-8")  # ~1 MB
        files.append(path)
    tok = train_tokenizer(files, "byte", 0)
    real = tc._encoder

    def slow_encoder(t: Any) -> Any:
        encode = real(t)

        def slow(texts: list[str]) -> Any:
            time.sleep(sum(len(x) for x in texts) / 1e6)
            return encode(texts)

        return slow

    monkeypatch.setattr(tc, "_encoder", slow_encoder)
    start = time.monotonic()
    asked = start + 0.3
    with pytest.raises(PreparationStopped):
        build_token_file(files, tok, should_stop=lambda: time.monotonic() >= asked)
    assert time.monotonic() - asked < 1.2  # one batch at most, not the whole 3 s corpus
    assert not list((cache_dir() / "tokens").glob("*.bin"))


def test_temp_files_of_dead_processes_are_removed(corpus: list[Path], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "cache"
    out.mkdir()
    stale = out / f".tmp-{'a' * 32}-{dead_pid}.bin"
    stale.write_bytes(b"half a token file")
    ours = out / f".tmp-{'b' * 32}-{os.getpid()}.bin"  # a live writer's file is left alone
    ours.write_bytes(b"being written")
    build_token_file(corpus, train_tokenizer(corpus, "byte", 0), cache_dir=out)
    assert not stale.exists() and ours.exists()


def test_added_tokens_change_the_fingerprint_and_leave_the_byte_fast_path(corpus: list[Path]) -> None:
    from engine.data.tokenizer_train import is_byte_tokenizer

    tok = train_tokenizer(corpus, "byte", 0)
    plain = build_token_file(corpus, tok)
    tok.add_tokens(["learning"])  # a plain added token is matched in text: ids change
    assert not is_byte_tokenizer(tok)
    extended = build_token_file(corpus, tok)
    assert extended.fingerprint != plain.fingerprint
    assert tokens_of(extended) == expected_stream(corpus, tok)
    assert tok.convert_tokens_to_ids("learning") in tokens_of(extended)
