"""Examples tokenized once into a cached token file: ids, a loss mask, and where each example starts.

Files (engine/data/token_cache.py's layout, in the token cache folder, named by a hash of the data,
the tokenizer, the chat template and the settings that change ids or mask):
- `<key>.bin`  the ids of every example back to back (uint16, or uint32 for large vocabularies);
- `<key>.mask` one uint8 a token: bit 0 = the token is a trained target, bit 1 = an example starts here
  (an example's first token is never a target: nothing of the example comes before it);
- `<key>.idx`  int64 rows (start, length, first trained offset or -1, trained tokens), one an example;
- `<key>.json` the sidecar, written last: it marks the set complete.
A second run, `estimate` and `llm-wizard data` on the same data and tokenizer open these instead of
tokenizing again, so all of them count the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import paths
from engine.data.corpus import PreparationStopped, corpus_fingerprint
from engine.data.render import Renderer, RenderError
from engine.data.sources import DataSource, Skipped, iter_items, source_bytes
from engine.data.temps import remove_stale_temps
from engine.data.token_cache import TokenFile, load_token_file, tokenizer_fingerprint
from engine.errors import UserError

if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = 2
BATCH_EXAMPLES = 512  # rendered and tokenized together (one Rust call over all cores)
TRAINED, START = 1, 2  # the mask's bits


@dataclass(frozen=True)
class ExampleFile:
    token_file: TokenFile
    n_examples: int
    trained_tokens: int
    skipped: int  # bad rows left out (data.on_bad_row = "skip")
    skipped_first: tuple[str, ...]  # the first few, with the reason

    @property
    def mask_path(self) -> Path:
        return self.token_file.path.with_suffix(".mask")

    @property
    def index_path(self) -> Path:
        return self.token_file.path.with_suffix(".idx")

    def index(self) -> np.ndarray:
        """(n_examples, 4) int64: start, length, first trained offset (-1: none), trained tokens."""
        import numpy as np

        return np.fromfile(self.index_path, dtype=np.int64).reshape(-1, 4)


def source_fingerprint(source: DataSource, should_stop: Callable[[], bool] | None = None) -> str:
    """A hash of the settings and the content read (files by content; a Hub dataset by its fingerprint)."""
    settings = json.dumps(asdict(source) | {"path": "", "kind": source.kind}, sort_keys=True)
    if source.kind == "hub":
        from engine.data import hub_datasets

        content = f"hub:{source.path}:{hub_datasets.load(source)._fingerprint}"
    else:
        content = corpus_fingerprint(source.files(), should_stop)
    return hashlib.sha256(f"{settings}|{content}".encode()).hexdigest()


def _load(final: Path) -> ExampleFile | None:
    try:
        token_file = load_token_file(final, verify=True)  # its sha256 too (RELIABILITY C14)
        meta = json.loads(final.with_suffix(".json").read_text())
        if meta.get("format") != FORMAT_VERSION or final.with_suffix(".mask").stat().st_size != token_file.n_tokens \
                or final.with_suffix(".idx").stat().st_size != 32 * meta["n_examples"]:
            return None
        return ExampleFile(token_file, meta["n_examples"], meta["trained_tokens"], meta.get("skipped", 0),
                           tuple(meta.get("skipped_first", ())))
    except (UserError, OSError, ValueError, KeyError):
        return None  # incomplete or damaged: built again


def build_example_file(
    source: DataSource,
    renderer: Renderer,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExampleFile:
    """Render and tokenize every item once into cache_dir/<key>.bin (+ .mask, .idx), or reuse them."""
    import numpy as np

    tokenizer = renderer.tokenizer
    data_fp = source_fingerprint(source, should_stop)
    tok_fp = tokenizer_fingerprint(tokenizer)
    recipe = f"{renderer.template.source}|{renderer.train_on}"
    key = hashlib.sha256(f"examples v{FORMAT_VERSION}|{data_fp}|{tok_fp}|{recipe}".encode()).hexdigest()[:32]
    # RELIABILITY S9: the conversations as ids, private to their owner whatever the umask
    folder = paths.private_dir(Path(cache_dir)) if cache_dir is not None else paths.private_cache("tokens")
    final = folder / f"{key}.bin"
    if final.with_suffix(".json").exists() and (found := _load(final)) is not None:
        return found
    remove_stale_temps(folder)
    digest = hashlib.sha256()
    max_id = max(max(tokenizer.get_vocab().values(), default=0), tokenizer.eos_token_id or 0)
    dtype = np.uint16 if max_id < 1 << 16 else np.uint32
    total = source_bytes(source)
    tmp = folder / f".tmp-{key}-{os.getpid()}.bin"
    tmps = [tmp, tmp.with_suffix(".mask"), tmp.with_suffix(".idx")]
    started = time.monotonic()
    n_tokens = n_trained = n_examples = 0
    skipped = Skipped()
    try:
        for t in tmps:
            os.close(os.open(t, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        with tmps[0].open("wb") as ids_out, tmps[1].open("wb") as mask_out, tmps[2].open("wb") as idx_out:
            def flush(batch: list[Any]) -> None:
                nonlocal n_tokens, n_trained, n_examples
                if not batch:
                    return
                try:
                    encoded = renderer.encode([item.value for item in batch])
                except RenderError as exc:
                    raise UserError(f"{batch[exc.index].where}: {exc}", field="data.template") from None
                lengths = np.fromiter((len(e.ids) for e in encoded), np.int64, len(encoded))
                ids = np.concatenate([e.ids for e in encoded]).astype(dtype)
                mask = np.concatenate([e.mask for e in encoded]).astype(np.uint8) & TRAINED
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                mask[starts[lengths > 0]] = START  # the first token of an example is never a target
                rows = np.empty((len(encoded), 4), np.int64)
                rows[:, 0], rows[:, 1] = starts + n_tokens, lengths
                for k, e in enumerate(encoded):
                    trained = np.flatnonzero(mask[starts[k]:starts[k] + lengths[k]] & TRAINED)
                    rows[k, 2] = trained[0] if len(trained) else -1
                    rows[k, 3] = len(trained)
                ids = np.ascontiguousarray(ids)
                ids.tofile(ids_out)
                digest.update(memoryview(ids).cast("B"))
                mask.tofile(mask_out)
                rows.tofile(idx_out)
                n_tokens += len(ids)
                n_trained += int(rows[:, 3].sum())
                n_examples += len(encoded)

            batch: list[Any] = []
            for item in iter_items(source, skipped):
                batch.append(item)
                if len(batch) >= BATCH_EXAMPLES:
                    flush(batch)
                    batch = []
                    if progress is not None:
                        progress(min(item.done, total), total)
                    if should_stop is not None and should_stop():
                        raise PreparationStopped(f"stopped after {n_examples} examples")
            flush(batch)
            for handle in (ids_out, mask_out, idx_out):
                handle.flush()
                os.fsync(handle.fileno())
        for t in tmps[1:]:
            os.replace(t, final.with_suffix(t.suffix))
        os.replace(tmp, final)
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)
    meta = {"format": FORMAT_VERSION, "n_tokens": n_tokens, "dtype": np.dtype(dtype).name, "fingerprint": key,
            "source_fingerprint": data_fp, "tokenizer_fingerprint": tok_fp, "eos_token_id": tokenizer.eos_token_id,
            "vocab_size": len(tokenizer), "n_examples": n_examples, "trained_tokens": n_trained,
            "skipped": skipped.count, "skipped_first": skipped.first, "template": renderer.template.name,
            "source": source.path, "sources": [str(source.path)], "kind": source.kind, "bytes": total,
            "sha256": digest.hexdigest(),
            "seconds": round(time.monotonic() - started, 3)}
    sidecar_tmp = folder / f".tmp-{key}-{os.getpid()}.json"
    with os.fdopen(os.open(sidecar_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
    os.replace(sidecar_tmp, final.with_suffix(".json"))  # the sidecar last: it marks the files complete
    if progress is not None:
        progress(total, total)
    return ExampleFile(TokenFile(final, n_tokens, meta["dtype"], key), n_examples, n_trained, skipped.count,
                       tuple(skipped.first))
