"""Examples packed into the token blocks the trainer eats, with a loss mask for prompts.

`example_blocks(source, tokenizer, seq_len, ...)` tokenizes every example once (prompt and completion
apart, as the book's listing 5.3 does, then an eos after each document) into a cached token file in
engine/data/token_cache.py's format, plus a uint8 `.mask` file beside it: 1 where the token is a trained
target, 0 on prompt tokens. A plain text source goes through token_cache.build_token_file unchanged.

Blocks: without masking, a `TokenBlocks` (batches of shape (B, T+1)). With masking, `MaskedBlocks`,
whose batches are (B, 2, T+1): row 0 the ids, row 1 the mask. `lm_loss(model, batch)` takes either.
Examples are packed back to back (no padding), so a block may hold the end of one and the start of
the next, as in the scratch technique.

    # in a technique's setup(ctx): any data source, prompts masked as the spec says
    data, fingerprint = source_blocks(ctx, tokenizer)
    return Prepared(model=model, tokenizer=tokenizer, data=data, data_fingerprint=fingerprint, ...)
    # in its loss(prep, batch)
    return lm_loss(prep.model, batch)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine import paths
from engine.data.corpus import PreparationStopped, corpus_fingerprint
from engine.data.sources import DataSource, examples_with_bytes, source_bytes
from engine.errors import UserError
from engine.data.temps import remove_stale_temps
from engine.data.token_cache import TokenBlocks, TokenFile, _encoder, build_token_file, load_token_file, \
    tokenizer_fingerprint

if TYPE_CHECKING:
    import numpy as np
    import torch

    from engine.spec import RunSpec


class DataContext(Protocol):
    """What source_blocks needs from a technique's setup (engine.techniques.base.SetupContext is one): the
    data lives below the techniques, so it names the shape, not the class."""
    spec: RunSpec

    def progress(self, message: str) -> None: ...

    def should_stop(self) -> bool: ...


FORMAT_VERSION = 1
BATCH_EXAMPLES = 1024  # examples tokenized together (one Rust call over all cores)


def mask_path(token_file: TokenFile) -> Path:
    return token_file.path.with_suffix(".mask")


class MaskedBlocks(TokenBlocks):
    """TokenBlocks whose batches also carry the loss mask: (B, 2, T+1), ids then mask."""

    def __init__(self, token_file: TokenFile, seq_len: int, val_fraction: float = 0.05, seed: int = 0) -> None:
        import numpy as np

        super().__init__(token_file, seq_len, val_fraction, seed)
        path = mask_path(token_file)
        if not path.is_file() or path.stat().st_size != token_file.n_tokens:
            raise UserError(f"loss mask {path} is missing or incomplete; delete {token_file.path} to rebuild")
        self._mask = np.memmap(path, dtype=np.uint8, mode="r", shape=(token_file.n_tokens,))
        trained = int(np.count_nonzero(self._mask[1:self.train_tokens]))
        if trained == 0:  # RELIABILITY.md D7: a zero loss (or NaN) would follow
            raise UserError("every training token is masked (prompts only, no responses): nothing to learn; "
                            "check the response/label column or set data.mask_prompt = false", field="data.mask_prompt")
        if self.val_tokens and not np.count_nonzero(self._mask[self.train_tokens + 1:]):
            raise UserError(f"the validation split (the last {self.val_tokens} tokens) holds prompts only, so its "
                            "loss would be empty; change data.val_fraction", field="data.val_fraction")
        self.trained_tokens = trained

    def _rows(self, starts: np.ndarray, torch: Any) -> torch.Tensor:
        import numpy as np

        index = starts[:, None] + self._offsets
        both = np.stack([self._tokens[index].astype(np.int64), self._mask[index].astype(np.int64)], axis=1)
        return torch.from_numpy(both)

    def describe(self) -> dict[str, int]:
        return {**super().describe(), "trained_tokens": self.trained_tokens}


def lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy on (B, T+1) ids, or on (B, 2, T+1) ids + mask counting masked targets out.

    The mean is over trained targets; a micro-batch that holds none gives 0 with a gradient (not NaN).
    """
    import torch.nn.functional as F

    if batch.dim() == 2:
        ids, mask = batch, None
    else:
        ids, mask = batch[:, 0], batch[:, 1]
    logits = model(input_ids=ids[:, :-1]).logits
    targets = ids[:, 1:]
    if mask is not None:
        targets = targets.masked_fill(mask[:, 1:] == 0, -100)
    flat = logits.reshape(-1, logits.size(-1)).float()
    loss_sum = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss_sum / (targets != -100).sum().clamp(min=1)


def example_blocks(
    source: DataSource,
    tokenizer: Any,
    seq_len: int,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[TokenBlocks, str]:
    """(blocks, data fingerprint) for any source: MaskedBlocks when the source masks prompts."""
    if source.kind == "text":
        token_file = build_token_file(source.files(), tokenizer, cache_dir=cache_dir, progress=progress,
                                      should_stop=should_stop)
        return TokenBlocks(token_file, seq_len, val_fraction, seed), token_file.fingerprint
    token_file = build_example_file(source, tokenizer, cache_dir=cache_dir, progress=progress,
                                    should_stop=should_stop)
    cls = MaskedBlocks if source.masks else TokenBlocks
    return cls(token_file, seq_len, val_fraction, seed), token_file.fingerprint


def source_blocks(ctx: DataContext, tokenizer: Any) -> tuple[TokenBlocks, str]:
    """example_blocks for a technique's setup(): the run's data spec, progress and stop request."""
    spec = ctx.spec
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 1.0:
            last[0] = time.monotonic()
            ctx.progress(f"tokenizing: {done / max(total, 1):.0%} of {total / 1e6:.1f} MB")

    return example_blocks(DataSource.from_spec(spec.data), tokenizer, spec.train.seq_len,
                          val_fraction=spec.data.val_fraction, seed=spec.seed, progress=progress,
                          should_stop=ctx.should_stop)


def source_fingerprint(source: DataSource, should_stop: Callable[[], bool] | None = None) -> str:
    """A hash of the settings and the content read (files by content; a Hub dataset by its fingerprint)."""
    settings = json.dumps(asdict(source) | {"path": "", "kind": source.kind}, sort_keys=True)
    if source.kind == "hub":
        from engine.data.sources import _hub_dataset

        content = f"hub:{source.path}:{_hub_dataset(source)._fingerprint}"
    else:
        content = corpus_fingerprint(source.files(), should_stop)
    return hashlib.sha256(f"{settings}|{content}".encode()).hexdigest()


def build_example_file(
    source: DataSource,
    tokenizer: Any,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TokenFile:
    """Tokenize the examples once into cache_dir/<hash>.bin (+ .mask), or reuse them if there."""
    import numpy as np

    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no eos token to separate examples; set tokenizer.eos_token", field="tokenizer")
    data_fp = source_fingerprint(source, should_stop)
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = hashlib.sha256(f"examples v{FORMAT_VERSION}|{data_fp}|{tok_fp}".encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "tokens"
    final = folder / f"{key}.bin"
    if final.with_suffix(".json").exists():
        try:
            token_file = load_token_file(final)
            if mask_path(token_file).stat().st_size == token_file.n_tokens:
                return token_file
        except (UserError, OSError):
            pass  # incomplete or damaged: build it again below
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    encode = _encoder(tokenizer)
    total = source_bytes(source)
    tmp = folder / f".tmp-{key}-{os.getpid()}.bin"
    tmp_mask = tmp.with_suffix(".mask")
    started = time.monotonic()
    n_tokens = n_trained = n_examples = 0
    try:
        with tmp.open("wb") as ids_out, tmp_mask.open("wb") as mask_out:
            def flush(batch: list[Any]) -> None:
                nonlocal n_tokens, n_trained
                if not batch:
                    return
                texts = [t for ex in batch for t in (ex.prompt, ex.completion)]
                encoded = encode(texts)
                parts, masks = [], []
                for k, ex in enumerate(batch):
                    prompt_ids, completion_ids = encoded[2 * k], encoded[2 * k + 1]
                    tail = [eos] if ex.ends else []
                    parts += [prompt_ids, completion_ids, np.asarray(tail, dtype=np.int64)]
                    masks += [np.zeros(len(prompt_ids), np.uint8), np.ones(len(completion_ids) + len(tail), np.uint8)]
                ids = np.concatenate(parts).astype(dtype)
                mask = np.concatenate(masks)
                ids.tofile(ids_out)
                mask.tofile(mask_out)
                n_tokens += len(ids)
                n_trained += int(mask.sum())

            batch: list[Any] = []
            done = 0
            for example, done in examples_with_bytes(source):
                batch.append(example)
                n_examples += 1
                if len(batch) >= BATCH_EXAMPLES:
                    flush(batch)
                    batch = []
                    if progress is not None:
                        progress(min(done, total), total)
                    if should_stop is not None and should_stop():
                        raise PreparationStopped(f"stopped after {n_examples} examples")
            flush(batch)
            for handle in (ids_out, mask_out):
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_mask, final.with_suffix(".mask"))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_mask.unlink(missing_ok=True)
    meta = {"format": FORMAT_VERSION, "n_tokens": n_tokens, "dtype": np.dtype(dtype).name, "fingerprint": key,
            "source_fingerprint": data_fp, "tokenizer_fingerprint": tok_fp, "eos_token_id": eos,
            "vocab_size": len(tokenizer), "n_examples": n_examples, "trained_tokens": n_trained,
            "source": source.path, "kind": source.kind, "bytes": total,
            "seconds": round(time.monotonic() - started, 3)}
    sidecar_tmp = folder / f".tmp-{key}-{os.getpid()}.json"
    sidecar_tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(sidecar_tmp, final.with_suffix(".json"))  # the sidecar last: it marks the files complete
    if progress is not None:
        progress(total, total)
    return TokenFile(final, n_tokens, meta["dtype"], key)
