"""Text tokenized once into a flat, memory-mapped token file, and training blocks cut from it.

The token file is the corpus's documents tokenized in order, each followed by eos, as uint16 (or
uint32 for vocabularies over 65536) with a small JSON sidecar. Its name is a hash of the corpus and
the tokenizer, so the second run on the same data opens it instantly instead of tokenizing again,
and a resume can tell that the data changed (RELIABILITY.md D10).

TokenBlocks serves training batches from it without reading it into memory. The data position is
(epoch, position): the epoch's permutation of blocks comes from (seed, epoch), so these two numbers
are all a checkpoint needs for an exact resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import paths
from engine.data.corpus import PreparationStopped, corpus_fingerprint, iter_pieces
from engine.errors import UserError
from engine.data.temps import remove_stale_temps
from engine.data.tokenizer_train import encoding_rules, is_byte_tokenizer

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["PreparationStopped", "TokenBlocks", "TokenFile", "build_token_file", "load_token_file"]

FORMAT_VERSION = 1
# Text is handed to the tokenizer in pieces of about this many bytes, cut after a newline. The size
# is part of the cache key: a different cut can change a token at the seam.
PIECE_BYTES = 1 << 16


@dataclass(frozen=True)
class TokenFile:
    """A finished token file: `n_tokens` ids of `dtype` at `path`, named by `fingerprint`."""

    path: Path
    n_tokens: int
    dtype: str
    fingerprint: str  # hash of the corpus and the tokenizer

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")


def load_token_file(path: Path, *, verify: bool = False, vocab_size: int | None = None) -> TokenFile:
    """A TokenFile from its .bin path (or its .json sidecar), checked to be complete; with `verify`, also its
    sha256 against the sidecar's and every id below `vocab_size` (RELIABILITY C14: a damaged cache never
    trains silently, nor fails with an IndexError inside the model)."""
    sidecar = Path(path).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        token_file = TokenFile(sidecar.with_suffix(".bin"), int(meta["n_tokens"]), meta["dtype"], meta["fingerprint"])
        itemsize = {"uint16": 2, "uint32": 4}[token_file.dtype]
        complete = token_file.path.stat().st_size == token_file.n_tokens * itemsize
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"token file {path} is missing or unreadable ({exc}); delete it to rebuild") from None
    if not complete:
        raise UserError(f"token file {token_file.path} is incomplete; delete it to rebuild")
    if verify:
        if not isinstance(meta.get("sha256"), str):
            raise UserError(f"token file {token_file.path} has no checksum (an older version wrote it)")
        digest, top = _scan(token_file)
        if digest != meta["sha256"]:
            raise UserError(f"token file {token_file.path} is damaged (checksum mismatch)")
        if vocab_size is not None and top >= vocab_size:
            raise UserError(f"token file {token_file.path} holds id {top}, outside the tokenizer's {vocab_size} ids")
    return token_file


def _scan(token_file: TokenFile, chunk: int = 1 << 24) -> tuple[str, int]:
    """(sha256 of the ids, the largest id) in one pass over the memory-mapped file."""
    import numpy as np

    h, top = hashlib.sha256(), -1
    if token_file.n_tokens:
        ids = np.memmap(token_file.path, dtype=token_file.dtype, mode="r", shape=(token_file.n_tokens,))
        for start in range(0, token_file.n_tokens, chunk):
            part = np.ascontiguousarray(ids[start:start + chunk])
            h.update(memoryview(part).cast("B"))
            top = max(top, int(part.max()))
        del ids
    return h.hexdigest(), top


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the ids of plain text, plus the eos id written between documents."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = encoding_rules(backend.to_str())
    else:  # a slow (Python) tokenizer: its vocabulary and class stand in for the rules
        body = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    text = f"{body}|eos={tokenizer.eos_token_id}|n={len(tokenizer)}"
    return hashlib.sha256(text.encode()).hexdigest()


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[np.ndarray]]:
    """A function from a batch of texts to their ids, the fastest way this tokenizer allows.

    Special-token text inside a document ("<|endoftext|>" in a source file) stays plain text, so
    the only eos ids in a token file are the document boundaries.
    """
    import numpy as np

    if is_byte_tokenizer(tokenizer):  # ids are the UTF-8 bytes: no tokenizer needed
        return lambda texts: [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(backend.to_str())  # a private copy: its settings are ours to change
        rust.no_truncation()
        rust.no_padding()
        rust.encode_special_tokens = True
        # encode_batch_fast skips offsets; both split the batch over all cores in Rust.
        encode = getattr(rust, "encode_batch_fast", rust.encode_batch)
        return lambda texts: [np.asarray(e.ids, dtype=np.int64) for e in encode(texts, add_special_tokens=False)]
    return lambda texts: [
        np.asarray(ids, dtype=np.int64) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
    ]


def _batch_bytes() -> int:
    """The largest batch. Encodings take about 21 bytes of memory per byte of text while a batch is
    in flight, so 16 MB (~350 MB) is the ceiling; at ~3 MB/s a core that still feeds 16 cores for
    a third of a second in 256 pieces."""
    return max(2, min(os.cpu_count() or 1, 4)) * (4 << 20)


# Batches are sized to take about this long, so should_stop is polled a few times a second whatever
# the tokenizer's speed (RELIABILITY.md G3: a SIGTERM during data preparation is honoured in < 2 s).
TARGET_BATCH_SECONDS = 0.4
MIN_BATCH_BYTES = 64 << 10


def _document_pieces(files: Sequence[Path]) -> Iterator[tuple[str, int, bool]]:
    """(text, file bytes, ends a document) for every piece of every file, in order."""
    for path in files:
        pieces = iter_pieces(path, PIECE_BYTES)
        previous = next(pieces, None)
        if previous is None:
            continue
        for piece in pieces:
            yield previous[0], previous[1], False
            previous = piece
        yield previous[0], previous[1], True


def build_token_file(
    files: Sequence[Path],
    tokenizer: Any,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> TokenFile:
    """Tokenize every file once (eos after each) into cache_dir/<hash>.bin, or reuse it if there.

    `progress(bytes_done, bytes_total)` is called after every batch; `should_stop()` is polled
    between batches and, when true, the partial file is removed and PreparationStopped raised.
    Bad files raise UserError (empty, binary, not UTF-8) naming the file. A cached file that fails its
    check is rebuilt, said through `notice` (default: a line on stderr, the job's job.log).
    """
    import numpy as np

    files = [Path(f) for f in files]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no eos token to separate documents; set tokenizer.eos_token", field="tokenizer")
    corpus = corpus_fingerprint(files, should_stop)
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = hashlib.sha256(f"v{FORMAT_VERSION}|{corpus}|{tok_fp}|{PIECE_BYTES}".encode()).hexdigest()[:32]
    # RELIABILITY S9: the cache holds the corpus's text as ids: its owner's alone, whatever the umask
    folder = paths.private_dir(Path(cache_dir)) if cache_dir is not None else paths.private_cache("tokens")
    final = folder / f"{key}.bin"
    # By the largest id, not len(): added tokens may leave gaps above the base vocabulary.
    max_id = max(max(tokenizer.get_vocab().values(), default=0), eos)
    if final.with_suffix(".json").exists():
        try:
            return load_token_file(final, verify=True, vocab_size=max(max_id + 1, len(tokenizer)))
        except UserError as e:  # incomplete or damaged: said, then built again below
            (notice or _notice)(f"{e}; tokenizing the data again")
    remove_stale_temps(folder)
    dtype = np.uint16 if max_id < 1 << 16 else np.uint32
    digest = hashlib.sha256()
    total = sum(f.stat().st_size for f in files)
    encode = _encoder(tokenizer)
    tmp = folder / f".tmp-{key}-{os.getpid()}.bin"
    started = time.monotonic()
    n_tokens = done = n_docs = 0

    def flush(batch: list[tuple[str, int, bool]]) -> None:
        nonlocal n_tokens, done, n_docs
        parts: list[np.ndarray] = []
        for (_, n_bytes, ends_doc), ids in zip(batch, encode([t for t, _, _ in batch])):
            parts.append(ids)
            if ends_doc:
                parts.append(np.array([eos]))
                n_docs += 1
            done += n_bytes
        if parts:
            out = np.ascontiguousarray(np.concatenate(parts).astype(dtype))
            out.tofile(handle)
            digest.update(memoryview(out).cast("B"))
            n_tokens += len(out)
        if progress is not None and done < total:  # the end is reported once, when the file is in place
            progress(done, total)

    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            cap = _batch_bytes()
            limit = min(cap, 2 * PIECE_BYTES)  # small at first; then sized from the measured speed
            batch: list[tuple[str, int, bool]] = []
            size = 0
            for piece in _document_pieces(files):
                batch.append(piece)
                size += piece[1]
                if size < limit:
                    continue
                t0 = time.monotonic()
                flush(batch)
                rate = size / max(time.monotonic() - t0, 1e-3)
                limit = int(min(cap, max(MIN_BATCH_BYTES, rate * TARGET_BATCH_SECONDS)))
                batch, size = [], 0
                if should_stop is not None and should_stop():
                    raise PreparationStopped(f"stopped after {done / 1e6:.1f} of {total / 1e6:.1f} MB")
            flush(batch)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "n_tokens": n_tokens,
        "dtype": np.dtype(dtype).name,
        "fingerprint": key,
        "sha256": digest.hexdigest(),
        "corpus_fingerprint": corpus,
        "tokenizer_fingerprint": tok_fp,
        "eos_token_id": eos,
        "vocab_size": len(tokenizer),
        "n_documents": n_docs,
        "n_files": len(files),
        "sources": [str(f.resolve()) for f in files[:100]],  # what `llm-wizard cache list` names
        "bytes": total,
        "seconds": round(time.monotonic() - started, 3),
    }
    sidecar_tmp = folder / f".tmp-{key}-{os.getpid()}.json"
    with os.fdopen(os.open(sidecar_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
    os.replace(sidecar_tmp, final.with_suffix(".json"))  # the sidecar last: it marks the file complete
    if progress is not None:
        progress(total, total)
    return TokenFile(final, n_tokens, meta["dtype"], key)


def _notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TokenBlocks:
    """Training and validation blocks of `seq_len + 1` tokens over a memory-mapped TokenFile.

    Block i starts at token i * seq_len, so neighbours share one token: the last target of one
    block is the first input of the next, and no token is wasted. Validation is the last
    `val_fraction` of the stream (at least one block), kept apart from training.

    Data position: sample g = epoch * n_train_blocks + position is row `position` of the epoch's
    permutation, drawn from (seed, epoch). A batch that runs past the end of an epoch goes on into
    the next one, so any batch size works on any dataset; `advance` gives the position after it.
    """

    def __init__(self, token_file: TokenFile, seq_len: int, val_fraction: float = 0.05, seed: int = 0) -> None:
        import numpy as np

        if seq_len < 1:
            raise UserError(f"seq_len must be at least 1, got {seq_len}", field="seq_len")
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}", field="val_fraction")
        n = token_file.n_tokens
        need = seq_len + 1
        if n < need:
            raise UserError(
                f"dataset has {n} tokens, need at least seq_len+1 = {need} for one training sequence; "
                "add text or lower seq_len",
                field="seq_len",
            )
        val_len = max(math.ceil(n * val_fraction), need) if val_fraction > 0 else 0
        if n - val_len < need and n >= 2 * need:
            raise UserError(
                f"val_fraction {val_fraction} leaves {n - val_len} training tokens, fewer than seq_len+1 = {need}; "
                "lower val_fraction",
                field="val_fraction",
            )
        if n - val_len < need:
            raise UserError(
                f"dataset has {n} tokens, need at least 2 x (seq_len+1) = {2 * need} for one training and one "
                "validation sequence; add text, lower seq_len or set val_fraction = 0",
                field="seq_len",
            )
        self.token_file = token_file
        self.seq_len = seq_len
        self.seed = seed
        self.n_tokens = n
        self.train_tokens = n - val_len
        self.val_tokens = val_len
        self.n_train_blocks = (self.train_tokens - 1) // seq_len
        self.n_val_blocks = (val_len - 1) // seq_len if val_len else 0
        self._tokens = np.memmap(token_file.path, dtype=token_file.dtype, mode="r", shape=(n,))
        self._offsets = np.arange(need)
        self._perms: dict[int, np.ndarray] = {}
        self.report: Any = None  # engine.data.prepare.DataReport, when the blocks came through prepare()

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of training blocks in `epoch`: a function of (seed, epoch) only."""
        import numpy as np

        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_train_blocks)
            self._perms = {e: p for e, p in self._perms.items() if abs(e - epoch) <= 1}
            self._perms[epoch] = perm
        return perm

    def advance(self, epoch: int, position: int, batch_size: int) -> tuple[int, int]:
        """The data position after a batch of `batch_size` taken at (epoch, position)."""
        return divmod(epoch * self.n_train_blocks + position + batch_size, self.n_train_blocks)

    def epochs_done(self, epoch: int, position: int) -> float:
        """The share of the training data seen, in epochs (1.5 = one and a half passes)."""
        return epoch + position / self.n_train_blocks

    def blocks_at(self, epoch: int, position: int, batch_size: int) -> np.ndarray:
        """The indices of the training blocks at (epoch, position) onwards: the data-position contract that
        every block server (plain, packed examples, preference pairs) shares."""
        import numpy as np

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        if epoch < 0 or position < 0:
            raise ValueError(f"data position must not be negative: epoch {epoch}, position {position}")
        samples = epoch * self.n_train_blocks + position + np.arange(batch_size)
        epochs, rows = np.divmod(samples, self.n_train_blocks)
        blocks = np.empty(batch_size, dtype=np.int64)
        for e in range(int(epochs[0]), int(epochs[-1]) + 1):  # usually one epoch, two at a seam
            here = epochs == e
            blocks[here] = self.permutation(e)[rows[here]]
        return blocks

    def train_batch(self, epoch: int, position: int, batch_size: int) -> torch.Tensor:
        """A LongTensor (batch_size, seq_len + 1) of the blocks at (epoch, position) onwards."""
        import torch

        return self._rows(self.blocks_at(epoch, position, batch_size) * self.seq_len, torch)

    def val_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The validation blocks in order, `batch_size` at a time (the last batch may be smaller)."""
        import numpy as np
        import torch

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        for first in range(0, self.n_val_blocks, batch_size):
            count = min(batch_size, self.n_val_blocks - first)
            starts = self.train_tokens + (first + np.arange(count)) * self.seq_len
            yield self._rows(starts, torch)

    def _rows(self, starts: np.ndarray, torch: Any) -> torch.Tensor:
        import numpy as np

        rows = self._tokens[starts[:, None] + self._offsets]  # one gather from the memmap
        return torch.from_numpy(rows.astype(np.int64))

    def describe(self) -> dict[str, int]:
        """Sizes for events and the wizard's data check."""
        return {
            "tokens": self.n_tokens,
            "train_tokens": self.train_tokens,
            "val_tokens": self.val_tokens,
            "train_blocks": self.n_train_blocks,
            "val_blocks": self.n_val_blocks,
            "seq_len": self.seq_len,
        }
