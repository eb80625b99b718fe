"""Is the data enough? Token counts and the book's data rules.

Scratch wants about 20 tokens per parameter (Chinchilla: a 1B model, 20B tokens); a fine-tune with
fewer than about 1e-5 x parameters tokens (10K for 1B) will do little, and LoRA or retrieval is the
better tool. Tokens are counted exactly with the model's tokenizer up to `EXACT_LIMIT_BYTES` of
text; beyond, evenly spaced samples give a bytes-per-token ratio that is extrapolated, with an error
bar. Without a tokenizer (scratch, or a model folder without one) a stated bytes-per-token ratio is
used. Data is read through engine.data.sources (text files through engine.data.corpus), the same readers and
checks as training, so the count is what the trainer will see.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import vocabulary
from engine.errors import UserError

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022; the book's "1B parameters, 20B tokens"
FINETUNE_MIN_TOKENS_PER_PARAM = 1e-5  # the book: 10K tokens for a 1B model ("1/100,000")
EXACT_LIMIT_BYTES = 300 * 10**6  # above this, sample: exact counting runs at ~1-5 MB/s on 2 cores
SAMPLES = 64  # evenly spaced samples when extrapolating
SAMPLE_BYTES = 64 * 1024  # text per sample
# Without a tokenizer: OpenAI's rule for English BPE text, "1 token ~ 4 characters"; for a byte- or
# char-level scratch tokenizer it is 1.
DEFAULT_BYTES_PER_TOKEN = 4.0

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    exact: bool  # counted every token with the tokenizer
    error: int  # +/- tokens (about two standard errors of the sampled ratio; 0 when exact)
    method: str  # how the count was made, in words
    bytes: int  # text bytes counted
    documents: int
    trained_tokens: int | None = None  # examples counted as trained: the tokens that carry the loss


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
    trained_tokens: int | None = None  # of `tokens`, those that carry the loss (examples counted as trained)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading: engine.data.sources's sources, so the check counts what the trainer will read -------------


def source_for(dataset: str, text_column: str | None = None, pairs: bool = False, **options: Any) -> Any:
    """engine.data.sources.DataSource for a path (or, when no such path exists, a cached Hub dataset id);
    `pairs`: read as preference pairs (the dpo and orpo techniques); `options` are its other fields (format,
    template, train_on, prompt_column...), as a spec's data section."""
    from engine.data.sources import DataSource

    path = Path(os.path.expanduser(dataset))
    hub = not path.exists() and dataset.count("/") == 1 and not dataset.startswith((".", "/", "~"))
    if not path.exists() and not hub:
        raise UserError(f"dataset {dataset} not found: pass a .txt, .jsonl, .csv or .parquet file, a folder, or "
                        "a Hub dataset id in the local cache", field="dataset")
    if path.exists() and not os.access(path, os.R_OK):
        raise UserError(f"cannot read dataset {path}: permission denied", field="dataset")
    if hub:
        options["format"] = "hub"
    source = DataSource(dataset, text_column=text_column or "", pairs=pairs, **options)
    source.kind  # noqa: B018 (resolves the format now: a bad source fails before counting)
    return source


def iter_documents(source: Any) -> Iterator[tuple[str, int]]:
    """(text, source bytes read so far) for every item of a source (a conversation's messages joined)."""
    from engine.data.formats import Document, Pair
    from engine.data.sources import iter_items

    for item in iter_items(source):
        value = item.value
        if isinstance(value, Pair):  # both sides are trained on: both count
            messages = [*value.chosen.messages, *value.rejected.messages]
            text = "\n".join(m["content"] for m in messages)
        else:
            text = value.text if isinstance(value, Document) else "\n".join(m["content"] for m in value.messages)
        yield text, item.done


# --- tokenizers --------------------------------------------------------------------------------------


def load_tokenizer(model: str | None) -> Any | None:
    """The model's fast tokenizer (transformers, with its chat template) from its folder, the Hub cache or the
    Hub, or None when it has none this machine can read (the count falls back to bytes per token)."""
    if not model:
        return None
    folder = Path(os.path.expanduser(model))
    if folder.is_dir():
        if not (folder / "tokenizer.json").is_file():
            return None
    else:
        from engine.errors import UserError
        from engine.hub.repo import fetch_file, is_hub_id

        if not is_hub_id(model):
            return None
        try:
            folder = Path(fetch_file(model, "tokenizer.json", field="model", timeout=5.0)).parent
        except UserError:  # offline, gated, or a repo with no tokenizer.json
            return None
        for extra in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            try:  # the chat template and special tokens live beside it (the same snapshot), where the repo has them
                fetch_file(model, extra, field="model", timeout=5.0)
            except UserError:
                pass
    from transformers import AutoTokenizer

    try:  # the model's own code is never run here: a tokenizer that needs it counts by the ratio
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - a tokenizer this version cannot read: fall back to the ratio
        return None


def _encode_len(tokenizer: Any, texts: list[str]) -> int:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))


def _count_text(source: Any, tokenizer: Any, progress: Progress | None) -> int:
    """Tokens of a text source as the trainer's token file holds them: each piece's ids, an eos per document."""
    from engine.data.sources import iter_items, source_bytes
    from engine.data.token_cache import _encoder

    encode = _encoder(tokenizer)
    total = source_bytes(source)
    tokens, batch = 0, []
    for item in iter_items(source):
        batch.append(item.value.text)
        tokens += int(item.value.ends)
        if len(batch) >= 256:
            tokens += sum(len(ids) for ids in encode(batch))
            batch = []
            if progress is not None:
                progress(min(item.done, total), total)
    tokens += sum(len(ids) for ids in encode(batch)) if batch else 0
    if progress is not None:
        progress(total, total)
    return tokens


def report(source: Any, tokenizer: Any, seq_len: int, *, val_fraction: float = 0.05, show: int = 0,
           progress: Progress | None = None) -> Any:
    """engine.data.prepare's DataReport for a source: the examples through the chat template, as trained
    (the token cache it builds is the one the run then opens)."""
    from engine.data.prepare import prepare, with_shown

    prepared = prepare(source, tokenizer, seq_len, val_fraction=val_fraction, progress=progress)
    return with_shown(prepared, tokenizer, show) if show else prepared.report


def count_tokens(dataset: str, *, tokenizer: Any | None = None, text_column: str | None = None,
                 progress: Progress | None = None, exact_limit: int = EXACT_LIMIT_BYTES,
                 bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN, source: Any = None,
                 seq_len: int = 2048, val_fraction: float = 0.05, pairs: bool = False) -> TokenCount:
    """Tokens in a dataset: exact up to `exact_limit` bytes, sampled and extrapolated beyond. `source`
    (engine.data.sources.DataSource) carries a spec's data settings; examples (not plain text) are counted
    as trained: through the chat template, packed at `seq_len`."""
    from engine.data.sources import source_bytes

    source = source if source is not None else source_for(dataset, text_column, pairs)
    total = source_bytes(source)
    if tokenizer is not None and source.kind != "text" and total <= exact_limit:
        r = report(source, tokenizer, seq_len, val_fraction=val_fraction, progress=progress)
        return TokenCount(r.tokens, True, 0, f"exact: {r.examples} {r.format} examples through the "
                          f"{r.template or 'plain'} template, {r.trained_tokens} trained tokens", 0, r.examples,
                          r.trained_tokens)
    if tokenizer is not None and total > exact_limit:
        return _sampled(source, tokenizer, total, progress)
    n_bytes = docs = 0
    for text, done in iter_documents(source):
        n_bytes += len(text.encode("utf-8"))
        docs += 1
        if progress and tokenizer is None and docs % 256 == 0:
            progress(min(done, total), total)
    _nonempty(n_bytes, dataset)
    if tokenizer is None:
        if progress:
            progress(total, total)
        return TokenCount(int(round(n_bytes / bytes_per_token)), False, 0,
                          f"no tokenizer: {n_bytes} bytes / {bytes_per_token:g} bytes a token (estimate)",
                          n_bytes, docs)
    tokens = _count_text(source, tokenizer, progress)  # what the trainer sees: ids and an eos per document
    return TokenCount(tokens, True, 0, "exact: every example through the model's tokenizer", n_bytes, docs)


def _nonempty(n_bytes: int, dataset: str) -> None:
    if n_bytes == 0:
        raise UserError(f"dataset {dataset} has no text", field="dataset")


def _sampled(source: Any, tokenizer: Any, total: int, progress: Progress | None) -> TokenCount:
    """Tokenize evenly spaced samples; tokens = bytes / (bytes per token) with a 2-sigma error bar."""
    ratios: list[float] = []
    text_bytes = docs = 0
    if source.kind == "text":
        files = source.files()
        sizes = [f.stat().st_size for f in files]
        text_bytes, docs = sum(sizes), len(files)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for k in range(SAMPLES):
            offset = int((k + 0.5) * text_bytes / SAMPLES)
            idx = max(i for i, st in enumerate(starts) if st <= offset)
            with files[idx].open("rb") as handle:
                handle.seek(offset - starts[idx])
                chunk = handle.read(SAMPLE_BYTES).decode("utf-8", errors="ignore")
            if chunk.strip():
                ratios.append(len(chunk.encode("utf-8")) / max(1, _encode_len(tokenizer, [chunk])))
            if progress:
                progress(int((k + 1) * total / SAMPLES), total)
    else:
        # rows: one pass for the text bytes, tokenizing every n-th group of 64 rows as the sample
        every = max(1, total // (SAMPLES * SAMPLE_BYTES))
        group: list[str] = []
        for i, (text, done) in enumerate(iter_documents(source)):
            text_bytes += len(text.encode("utf-8"))
            docs += 1
            if (i // 64) % every == 0:
                group.append(text)
                if len(group) == 64:
                    size = sum(len(t.encode("utf-8")) for t in group)
                    if size:
                        ratios.append(size / max(1, _encode_len(tokenizer, group)))
                    group = []
            if progress and docs % 1024 == 0:
                progress(min(done, total), total)
        if progress:
            progress(total, total)
    _nonempty(text_bytes, source.path)
    if not ratios:
        raise UserError(f"dataset {source.path}: no text found in the samples", field="dataset")
    mean = statistics.fmean(ratios)
    sem = statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else mean
    error = text_bytes / mean * 2 * sem / mean
    tokens = text_bytes / mean + docs  # the trainer's end-of-text token after each document
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
        steps_per_epoch=steps_per_epoch, projected_epochs=epochs, trained_tokens=count.trained_tokens,
    )


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def check_data(dataset: str, *, technique: str, params: int, model: str | None, tokens_per_step: int,
               text_column: str | None = None, max_steps: int | None = None,
               progress: Progress | None = None, exact_limit: int = EXACT_LIMIT_BYTES, source: Any = None,
               seq_len: int = 2048, val_fraction: float = 0.05) -> DataCheck:
    """Count the dataset's tokens (with the model's tokenizer when there is one) and apply the rule."""
    tokenizer = load_tokenizer(model)
    count = count_tokens(dataset, tokenizer=tokenizer, text_column=text_column, progress=progress,
                         exact_limit=exact_limit, source=source, seq_len=seq_len, val_fraction=val_fraction,
                         pairs=technique in vocabulary.PREFERENCE_TECHNIQUES)
    return data_rule(technique, params, count, tokens_per_step=tokens_per_step, max_steps=max_steps)
