"""Tokenizers for training from scratch: byte-level BPE, a fixed byte vocabulary, or characters.

Every kind is a `tokenizers` Tokenizer wrapped as a transformers fast tokenizer with an eos token,
saved with save_pretrained and reloadable with AutoTokenizer.from_pretrained offline. Training is
cached under cache_dir()/tokenizers/<key>, the key made of the corpus fingerprint, kind and vocab
size, so the second run on the same data does not train again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.data.corpus import PreparationStopped, corpus_fingerprint, iter_text
from engine.data.temps import remove_stale_temps
from engine.errors import UserError
from engine.paths import private_cache, private_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

TokenizerKind = Literal["bpe", "byte", "char"]
KINDS: tuple[str, ...] = ("bpe", "byte", "char")
EOS = "<|endoftext|>"
UNK = "<unk>"
META_FILE = "llm_wizard_tokenizer.json"
# Bumped when the way a kind is built changes, so old cache entries are not reused.
FORMAT_VERSION = 1
MAX_VOCAB = 1 << 20


def _check_args(kind: str, vocab_size: int) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}", field="tokenizer")
    if kind == "bpe" and not 257 <= vocab_size <= MAX_VOCAB:
        raise UserError(
            f"vocab_size {vocab_size} is out of range for a byte-level BPE: it needs 257 to {MAX_VOCAB} "
            "(256 bytes + eos, then the merges)",
            field="vocab_size",
        )
    if kind == "char" and not 3 <= vocab_size <= MAX_VOCAB:
        raise UserError(f"vocab_size {vocab_size} is out of range for characters: 3 to {MAX_VOCAB}", field="vocab_size")


def _texts(files: Sequence[Path], should_stop: Callable[[], bool] | None) -> Iterator[str]:
    for path in files:
        for text in iter_text(path):
            if should_stop is not None and should_stop():
                raise PreparationStopped(f"stopped while reading {path} to train the tokenizer")
            yield text


def _bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The words are counted as the text streams in (should_stop is polled per piece); the merges
    # that follow run in Rust and cannot be interrupted.
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@lru_cache(maxsize=1)
def _byte_json() -> str:
    """A fixed vocabulary: token id b is byte b (0-255), eos is 256. No training, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    # ByteLevel maps byte b to a printable character; alphabet() lists them unordered, so build the
    # GPT-2 table (bytes_to_unicode) to pin id == byte value.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    assert set(mapping.values()) == set(ByteLevel.alphabet())
    vocab = {mapping[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return tok.to_str()


def _byte() -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_byte_json())


def encoding_rules(tokenizer_json: str) -> str:
    """The parts of a tokenizer.json that decide the ids of plain text (transformers adds a
    post-processor and padding/truncation settings on load; they do not change those ids)."""
    data = json.loads(tokenizer_json)
    parts = ("added_tokens", "normalizer", "pre_tokenizer", "model")
    return json.dumps([data.get(k) for k in parts], sort_keys=True)


def is_byte_tokenizer(tokenizer: object) -> bool:
    """True for the fixed byte vocabulary (ids are the UTF-8 bytes): token files can skip encoding."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    to_str = getattr(backend, "to_str", None)
    return to_str is not None and encoding_rules(to_str()) == encoding_rules(_byte_json())


def _char(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """The book's listing 5.1: one token per character, the most frequent first; rarer ones -> <unk>."""
    from tokenizers import Tokenizer, decoders, models

    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    # Ties broken by code point, so the vocabulary never depends on file or hash order.
    chars = sorted(counts, key=lambda c: (-counts[c], c))[: vocab_size - 2]
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    vocab[UNK] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS, UNK])
    return tok


def tokenizer_key(
    files: Sequence[Path], kind: str, vocab_size: int, should_stop: Callable[[], bool] | None = None,
    corpus_key: str | None = None,
) -> str:
    """The cache key: what the trained tokenizer depends on, and nothing else."""
    import tokenizers

    corpus = "" if kind == "byte" else corpus_key or corpus_fingerprint(files, should_stop)
    size = 0 if kind == "byte" else vocab_size
    text = f"v{FORMAT_VERSION}|{kind}|{size}|{corpus}|tokenizers {tokenizers.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save(tok: Tokenizer, kind: str, target: Path, meta: dict[str, object]) -> None:
    """save_pretrained into a temporary folder next to `target`, then rename it into place."""
    from transformers import PreTrainedTokenizerFast

    extra = {"unk_token": UNK} if kind == "char" else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, **extra)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(str(tmp))
    meta = {**meta, "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    private_dir(tmp)  # RELIABILITY S9: 0700, its files 0600, whatever the umask
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished the same key first; its copy is identical (training is deterministic).
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / META_FILE).exists():
            raise


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damage(folder: Path) -> str | None:
    """Why a cached tokenizer cannot be trusted (RELIABILITY C14), None when its files match their sha256."""
    try:
        files = json.loads((folder / META_FILE).read_text())["files"]
        if not isinstance(files, dict) or not files:
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return "without checksums (an older version wrote it)"
    for name, digest in files.items():
        path = folder / Path(name).name
        if not path.is_file() or _sha256(path) != digest:
            return f"damaged ({name} does not match its checksum)"
    return None


def train_tokenizer(
    files: Sequence[Path],
    kind: TokenizerKind,
    vocab_size: int,
    out_dir: Path | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    texts: Callable[[], Iterable[str]] | None = None,
    corpus_key: str | None = None,
) -> PreTrainedTokenizerFast:
    """A tokenizer for `files`, trained once per (corpus, kind, vocab_size) and then read from the cache.

    "bpe" trains a byte-level BPE of at most `vocab_size` tokens (fewer on a corpus too small to
    need them); "byte" is the fixed 257-token byte vocabulary (vocab_size is ignored); "char" keeps
    the vocab_size - 2 most frequent characters plus eos and <unk>. With `out_dir` the tokenizer is
    also saved there with save_pretrained. `should_stop` is polled while the text is read and,
    when true, PreparationStopped is raised with nothing cached. `texts` and `corpus_key`: train on these
    texts instead of the files' (a table's rows as the data path renders them), cached under that key.
    """
    from transformers import AutoTokenizer

    _check_args(kind, vocab_size)
    files = [Path(f) for f in files]
    key = tokenizer_key(files, kind, vocab_size, should_stop, corpus_key)
    target = private_cache("tokenizers") / key
    if (target / META_FILE).exists() and (problem := _damage(target)) is not None:
        print(f"cached tokenizer {target} is {problem}; training it again", file=sys.stderr, flush=True)
        shutil.rmtree(target, ignore_errors=True)
    if not (target / META_FILE).exists():
        stream = texts() if texts is not None else _texts(files, should_stop)
        if kind == "bpe":
            tok = _bpe(stream, vocab_size)
        elif kind == "char":
            tok = _char(stream, vocab_size)
        else:
            tok = _byte()
        meta = {"kind": kind, "vocab_size_asked": vocab_size, "vocab_size": tok.get_vocab_size(), "key": key,
                "sources": [str(f.resolve()) for f in files[:100]]}
        _save(tok, kind, target, meta)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    if out_dir is not None:
        out = Path(out_dir)
        tokenizer.save_pretrained(str(out))
        shutil.copy2(target / META_FILE, out / META_FILE)
    return tokenizer
