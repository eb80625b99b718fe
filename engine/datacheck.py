"""Is the data enough? Token counts and the book's data rules.

Scratch wants about 20 tokens per parameter (Chinchilla: a 1B model, 20B tokens); a fine-tune with
fewer than about 1e-5 x parameters tokens (10K for 1B) will do little, and LoRA or retrieval is the
better tool. Tokens are counted exactly with the model's tokenizer up to `EXACT_LIMIT_BYTES` of
text; beyond, evenly spaced samples give a bytes-per-token ratio that is extrapolated, with an error
bar. Without a tokenizer (scratch, or a model folder without one) a stated bytes-per-token ratio is
used. Plain text is read through engine.corpus (the same strict checks as training).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022; the book's "1B parameters, 20B tokens"
FINETUNE_MIN_TOKENS_PER_PARAM = 1e-5  # the book: 10K tokens for a 1B model ("1/100,000")
EXACT_LIMIT_BYTES = 300 * 10**6  # above this, sample: exact counting runs at ~1-5 MB/s on 2 cores
SAMPLES = 64  # evenly spaced samples when extrapolating
SAMPLE_BYTES = 64 * 1024  # text per sample
# Without a tokenizer: OpenAI's rule for English BPE text, "1 token ~ 4 characters"; for a byte- or
# char-level scratch tokenizer it is 1.
DEFAULT_BYTES_PER_TOKEN = 4.0
TEXT_COLUMNS = ("text", "content", "body", "message", "document")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    exact: bool  # counted every token with the tokenizer
    error: int  # +/- tokens (about two standard errors of the sampled ratio; 0 when exact)
    method: str  # how the count was made, in words
    bytes: int  # text bytes counted
    documents: int


@dataclass(frozen=True)
class DataCheck:
    tokens: int
    tokens_error: int
    exact: bool
    method: str
    params: int
    tokens_per_param: float
    required_tokens: int
    verdict: str  # enough | short | too little
    rule: str
    advice: str
    supported_params: int | None  # scratch: the model size the data supports (20 tokens a parameter)
    tokens_per_step: int
    steps_per_epoch: int
    projected_epochs: float | None  # at the chosen options: passes over the data for the planned budget

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading -----------------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "text")


def _pick_column(columns: list[str], text_column: str | None, where: str) -> str:
    if text_column:
        if text_column not in columns:
            raise UserError(f"{where} has no column {text_column!r}; it has {', '.join(columns)}", field="text_column")
        return text_column
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    raise UserError(f"{where}: which column holds the text? pass --text-column (columns: {', '.join(columns)})",
                    field="text_column")


def _jsonl_rows(path: Path, text_column: str | None) -> Iterator[tuple[str, int]]:
    column = text_column
    with _open(path) as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path} line {n} is not JSON", field="dataset") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {n} is not a JSON object", field="dataset")
            if column is None or n == 1:
                column = _pick_column(list(row), column, f"{path} line {n}")
            value = row.get(column)
            text = value if isinstance(value, str) else "" if value is None else str(value)
            yield text, len(line.encode("utf-8"))


def _open(path: Path) -> Any:
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", field="dataset") from None


def _csv_rows(path: Path, text_column: str | None) -> Iterator[tuple[str, int]]:
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        column = _pick_column(list(reader.fieldnames or []), text_column, str(path))
        for row in reader:
            text = row.get(column) or ""
            yield text, len(text.encode("utf-8")) + 1


def _parquet_rows(path: Path, text_column: str | None) -> Iterator[tuple[str, int]]:
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except Exception as err:  # not parquet, truncated, unreadable
        raise UserError(f"cannot read {path} as parquet: {err}", field="dataset") from None
    column = _pick_column(pf.schema_arrow.names, text_column, str(path))
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for value in batch.column(0).to_pylist():
            text = value if isinstance(value, str) else "" if value is None else str(value)
            yield text, len(text.encode("utf-8"))


def _size(path: Path) -> int:
    from engine.corpus import text_files

    if path.is_dir():
        return sum(p.stat().st_size for p in text_files(path))
    return path.stat().st_size


def iter_documents(path: Path, text_column: str | None = None) -> Iterator[tuple[str, int]]:
    """(text, file bytes it came from) for every document of a dataset."""
    from engine.corpus import iter_pieces, text_files

    kind = _kind(path)
    if kind in ("text", "folder"):
        for f in text_files(path):
            for text, n in iter_pieces(f):
                yield text, n
    elif kind == "jsonl":
        yield from _jsonl_rows(path, text_column)
    elif kind == "csv":
        yield from _csv_rows(path, text_column)
    else:
        yield from _parquet_rows(path, text_column)


def resolve_dataset(dataset: str) -> Path:
    path = Path(os.path.expanduser(dataset))
    if not path.exists():
        raise UserError(f"dataset {dataset} not found: pass a .txt, .jsonl, .csv or .parquet file or a folder "
                        "of text files", field="dataset")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read dataset {path}: permission denied", field="dataset")
    return path


# --- tokenizers --------------------------------------------------------------------------------------


def load_tokenizer(model: str | None) -> Any | None:
    """The model's fast tokenizer (tokenizers.Tokenizer) from its folder or the Hub cache, or None."""
    if not model:
        return None
    folder = Path(os.path.expanduser(model))
    if folder.is_dir():
        found: str | None = str(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, "tokenizer.json")
        found = hit if isinstance(hit, str) else None
    if found is None:
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(found)
    except Exception:  # a tokenizer.json this tokenizers version cannot read: fall back to the ratio
        return None


def _encode_len(tokenizer: Any, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))


def count_tokens(dataset: str, *, tokenizer: Any | None = None, text_column: str | None = None,
                 progress: Progress | None = None, exact_limit: int = EXACT_LIMIT_BYTES,
                 bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN) -> TokenCount:
    """Tokens in a dataset: exact up to `exact_limit` bytes, sampled and extrapolated beyond."""
    path = resolve_dataset(dataset)
    total = _size(path)
    if tokenizer is None:
        n_bytes = docs = done = 0
        for text, file_bytes in iter_documents(path, text_column):
            n_bytes += len(text.encode("utf-8"))
            docs += 1
            done += file_bytes
            if progress and docs % 256 == 0:
                progress(min(done, total), total)
        if progress:
            progress(total, total)
        _nonempty(n_bytes, path)
        return TokenCount(int(round(n_bytes / bytes_per_token)), False, 0,
                          f"no tokenizer: {n_bytes} bytes / {bytes_per_token:g} bytes a token (estimate)",
                          n_bytes, docs)
    if total <= exact_limit:
        tokens = n_bytes = docs = done = 0
        batch: list[str] = []
        for text, file_bytes in iter_documents(path, text_column):
            batch.append(text)
            n_bytes += len(text.encode("utf-8"))
            docs += 1
            done += file_bytes
            if len(batch) >= 256:
                tokens += _encode_len(tokenizer, batch)
                batch = []
                if progress:
                    progress(min(done, total), total)
        tokens += _encode_len(tokenizer, batch)
        if progress:
            progress(total, total)
        _nonempty(n_bytes, path)
        return TokenCount(tokens, True, 0, "exact: every document through the model's tokenizer", n_bytes, docs)
    return _sampled(path, tokenizer, text_column, total, progress)


def _nonempty(n_bytes: int, path: Path) -> None:
    if n_bytes == 0:
        raise UserError(f"dataset {path} has no text", field="dataset")


def _sampled(path: Path, tokenizer: Any, text_column: str | None, total: int, progress: Progress | None) -> TokenCount:
    """Tokenize evenly spaced samples; tokens = bytes / (bytes per token) with a 2-sigma error bar."""
    from engine.corpus import text_files

    ratios: list[float] = []
    text_bytes = 0
    docs = 0
    if _kind(path) in ("text", "folder"):
        files = text_files(path)
        sizes = [f.stat().st_size for f in files]
        text_bytes = sum(sizes)
        offsets = [int((k + 0.5) * text_bytes / SAMPLES) for k in range(SAMPLES)]
        starts, acc = [], 0
        for f, s in zip(files, sizes):
            starts.append(acc)
            acc += s
        for k, off in enumerate(offsets):
            idx = max(i for i, st in enumerate(starts) if st <= off)
            with files[idx].open("rb") as handle:
                handle.seek(off - starts[idx])
                chunk = handle.read(SAMPLE_BYTES).decode("utf-8", errors="ignore")
            if chunk.strip():
                ratios.append(len(chunk.encode("utf-8")) / max(1, _encode_len(tokenizer, [chunk])))
            if progress:
                progress(int((k + 1) * total / SAMPLES), total)
        docs = len(files)
    else:
        # rows: one pass for the text bytes, tokenizing every n-th row group as the sample
        every = max(1, total // (SAMPLES * SAMPLE_BYTES))
        group: list[str] = []
        for i, (text, _) in enumerate(iter_documents(path, text_column)):
            b = len(text.encode("utf-8"))
            text_bytes += b
            docs += 1
            if (i // 64) % every == 0:
                group.append(text)
                if len(group) == 64:
                    gb = sum(len(t.encode("utf-8")) for t in group)
                    if gb:
                        ratios.append(gb / max(1, _encode_len(tokenizer, group)))
                    group = []
        if progress:
            progress(total, total)
    _nonempty(text_bytes, path)
    if not ratios:
        raise UserError(f"dataset {path}: no text found in the samples", field="dataset")
    mean = statistics.fmean(ratios)
    sem = statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else mean
    tokens = text_bytes / mean
    error = tokens * 2 * sem / mean
    return TokenCount(int(round(tokens)), False, int(round(error)),
                      f"sampled: {len(ratios)} samples, {mean:.2f} bytes a token, extrapolated to "
                      f"{text_bytes} bytes (+/- 2 standard errors)", text_bytes, docs)


# --- the rules ---------------------------------------------------------------------------------------


def data_rule(technique: str, params: int, count: TokenCount, *, tokens_per_step: int,
              max_steps: int | None = None) -> DataCheck:
    """The book's verdict on `count` tokens for a model of `params` parameters."""
    tokens = count.tokens
    steps_per_epoch = max(1, math.ceil(tokens / tokens_per_step)) if tokens_per_step else 0
    if technique == "scratch":
        required = CHINCHILLA_TOKENS_PER_PARAM * params
        supported = tokens // CHINCHILLA_TOKENS_PER_PARAM
        rule = (f"from scratch: about {CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter (Chinchilla; "
                "1B parameters want 20B tokens)")
        if tokens >= required:
            verdict, advice = "enough", "enough data for a compute-optimal model of this size"
        else:
            verdict = "short" if tokens >= required / 10 else "too little"
            advice = (f"the data supports about {_human(supported)} parameters; train a smaller model, "
                      "gather more text, or fine-tune a pretrained model instead")
        budget_tokens = max_steps * tokens_per_step if max_steps else required
    else:
        required = math.ceil(FINETUNE_MIN_TOKENS_PER_PARAM * params)
        supported = None
        rule = ("fine-tuning: fewer than about 1e-5 x parameters tokens (10K for a 1B model) will do little")
        if tokens >= required:
            verdict, advice = "enough", "enough data for a fine-tune to change the model"
        else:
            verdict = "too little"
            advice = ("too little data to change the model much: prefer LoRA on more data, or retrieval "
                      "(put the documents in a search index and give them to the model in the prompt)")
        budget_tokens = max_steps * tokens_per_step if max_steps else None
    epochs = budget_tokens / tokens if budget_tokens and tokens else None
    return DataCheck(
        tokens=tokens, tokens_error=count.error, exact=count.exact, method=count.method, params=params,
        tokens_per_param=tokens / params if params else 0.0, required_tokens=int(required), verdict=verdict,
        rule=rule, advice=advice, supported_params=supported, tokens_per_step=tokens_per_step,
        steps_per_epoch=steps_per_epoch, projected_epochs=epochs,
    )


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def check_data(dataset: str, *, technique: str, params: int, model: str | None, tokens_per_step: int,
               text_column: str | None = None, max_steps: int | None = None,
               progress: Progress | None = None, exact_limit: int = EXACT_LIMIT_BYTES) -> DataCheck:
    """Count the dataset's tokens (with the model's tokenizer when there is one) and apply the rule."""
    tokenizer = load_tokenizer(model)
    count = count_tokens(dataset, tokenizer=tokenizer, text_column=text_column, progress=progress,
                         exact_limit=exact_limit)
    return data_rule(technique, params, count, tokens_per_step=tokens_per_step, max_steps=max_steps)
