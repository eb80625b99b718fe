"""Tokenizers trained for scratch runs: reloadable offline, cached, deterministic, with an eos token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine.data.tokenizer_train as tt
from engine.data.corpus import PreparationStopped
from engine.errors import UserError
from engine.paths import cache_dir
from engine.data.tokenizer_train import EOS, is_byte_tokenizer, train_tokenizer
from data_helpers import make_corpus

SAMPLE = "the café learns 数据\n\tresume() <|endoftext|> 😀"


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    return make_corpus(tmp_path / "corpus")


@pytest.mark.parametrize(("kind", "vocab_size"), [("bpe", 300), ("byte", 0), ("char", 64)])
def test_saved_and_reloaded_offline(corpus: list[Path], tmp_path: Path, kind: str, vocab_size: int) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    tok = train_tokenizer(corpus, kind, vocab_size, out_dir=out)  # type: ignore[arg-type]
    assert tok.eos_token == EOS and tok.eos_token_id is not None
    assert (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists()
    reloaded = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert reloaded.eos_token_id == tok.eos_token_id
    assert len(reloaded) == len(tok)
    ids = reloaded(SAMPLE, add_special_tokens=False)["input_ids"]
    assert ids == tok(SAMPLE, add_special_tokens=False)["input_ids"]
    if kind != "char":  # byte-level kinds are lossless on any text
        assert reloaded.decode(ids) == SAMPLE


def test_bpe_merges_shorten_the_text(corpus: list[Path]) -> None:
    tok = train_tokenizer(corpus, "bpe", 400)
    text = corpus[0].read_text(encoding="utf-8")
    assert 257 < len(tok) <= 400
    assert len(tok(text)["input_ids"]) < len(text.encode()) / 2


def test_byte_ids_are_the_utf8_bytes(corpus: list[Path]) -> None:
    tok = train_tokenizer(corpus, "byte", 12345)  # vocab_size does not apply to bytes
    assert len(tok) == 257 and tok.eos_token_id == 256
    assert tok(SAMPLE, add_special_tokens=False)["input_ids"][:20] == list(SAMPLE.encode())[:20]
    assert is_byte_tokenizer(tok)
    assert not is_byte_tokenizer(train_tokenizer(corpus, "bpe", 300))


def test_char_keeps_the_most_frequent_characters(corpus: list[Path]) -> None:
    tok = train_tokenizer(corpus, "char", 10)
    assert len(tok) == 10  # 8 characters + <unk> + eos
    ids = tok("the \u00ef", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and ids[-1] == tok.unk_token_id  # one id per character; rare ones are <unk>
    assert tok.convert_ids_to_tokens(ids[:3]) == ["t", "h", "e"]


def test_cached_not_retrained(corpus: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = tt._bpe
    monkeypatch.setattr(tt, "_bpe", lambda texts, size: calls.append(size) or real(texts, size))
    first = train_tokenizer(corpus, "bpe", 300)
    second = train_tokenizer(corpus, "bpe", 300)
    assert calls == [300]
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    (entry,) = (cache_dir() / "tokenizers").iterdir()
    assert json.loads((entry / tt.META_FILE).read_text())["kind"] == "bpe"
    train_tokenizer(corpus, "bpe", 320)  # another size is another tokenizer
    corpus[0].write_text("changed text\n", encoding="utf-8")
    train_tokenizer(corpus, "bpe", 300)  # changed data is another tokenizer
    assert calls == [300, 320, 300]


def test_deterministic(corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = train_tokenizer(corpus, "bpe", 350, out_dir=tmp_path / "a")
    monkeypatch.setenv("LLM_WIZARD_CACHE", str(tmp_path / "other-cache"))  # no cache hit: train again
    second = train_tokenizer(corpus, "bpe", 350, out_dir=tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert first.get_vocab() == second.get_vocab()


def test_bad_arguments(corpus: list[Path]) -> None:
    with pytest.raises(UserError, match="unknown tokenizer kind 'wordpiece'"):
        train_tokenizer(corpus, "wordpiece", 300)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="vocab_size 100 is out of range for a byte-level BPE") as caught:
        train_tokenizer(corpus, "bpe", 100)
    assert caught.value.field == "vocab_size"


def test_bad_file_is_named_before_training(corpus: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "corpus" / "zz.txt"
    bad.write_bytes("na\u00efve\n".encode("latin-1"))
    with pytest.raises(UserError, match=f"{bad} is not UTF-8: invalid byte 0xEF at line 1, byte offset 2"):
        train_tokenizer([*corpus, bad], "bpe", 300)
    assert not (cache_dir() / "tokenizers").exists() or not any((cache_dir() / "tokenizers").iterdir())


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_stop_while_reading_leaves_nothing(corpus: list[Path], kind: str) -> None:
    from engine.data.corpus import corpus_fingerprint

    corpus_fingerprint(corpus)  # hashed (and remembered) now, so every poll below is while reading
    polls = []
    with pytest.raises(PreparationStopped):
        train_tokenizer(corpus, kind, 300, should_stop=lambda: polls.append(1) or len(polls) > 2)  # type: ignore[arg-type]
    assert len(polls) == 3
    folder = cache_dir() / "tokenizers"
    assert not folder.exists() or not any(folder.iterdir())
