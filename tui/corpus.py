"""The training data as the wizard sees it: the source for what was typed, its size, a preview, and the
token count with the chosen tokenizer. Headless: the Textual step and --plain share it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tui.wizard import Choices

PREVIEW_LINES = 8


@dataclass(frozen=True)
class Corpus:
    files: int
    bytes: int
    kind: str  # text, jsonl, csv, parquet, slack, hub (engine.data.sources's formats)


def make_source(dataset: str, text_column: str | None, pairs: bool | None = None) -> Any:
    """engine.data.sources.DataSource for what was typed: stdlib, a path, or a cached Hub dataset id. `pairs`:
    read preference pairs (dpo, orpo); None: when the rows are preference rows, so that they preview (the
    token count, which knows the technique, refuses them for supervised training)."""
    from dataclasses import replace

    from engine.data.sources import DataSource
    from engine.errors import UserError
    from engine.estimate.data_size import source_for

    if dataset == "stdlib":
        return DataSource("stdlib")
    source = source_for(dataset, text_column, bool(pairs))
    if pairs is None and source.kind != "text":
        try:
            source.layout()
        except UserError as e:
            if "preference data" not in str(e):
                raise
            return replace(source, pairs=True)
    return source


def describe(source: Any) -> Corpus:
    from engine.data.sources import source_bytes

    return Corpus(len(source.files()), source_bytes(source), source.kind)


def preview(source: Any, lines: int = PREVIEW_LINES) -> str:
    """The first examples as training will see them (prompt and response shown apart)."""
    from engine.data.sources import preview as first_examples

    out: list[str] = []
    for row in first_examples(source, lines):
        if "text" in row:
            out += [ln for ln in row["text"].splitlines() if ln.strip()]
        else:
            out.append(f"{' '.join(row['prompt'].split())[:80]}  →  {' '.join(row['response'].split())}")
        if len(out) >= lines:
            break
    return "\n".join(ln[:200] for ln in out[:lines])


def count_tokens(c: Choices, progress: Callable[[int, int], None] | None = None) -> tuple[int, str]:
    """(tokens, how they were counted) for the chosen data and tokenizer. The byte tokenizer's count is
    exact without a tokenizer (UTF-8 bytes plus an end-of-text per document); a model's tokenizer
    counts through engine.estimate.data_size (exact up to a few hundred MB, sampled beyond)."""
    if c.technique == "scratch" and c.tokenizer == "byte":
        from engine.data.sources import iter_items, source_bytes

        source = make_source(c.dataset, c.text_column or None)
        total, tokens = source_bytes(source), 0
        for i, item in enumerate(iter_items(source)):
            tokens += len(item.value.text.encode("utf-8")) + int(item.value.ends)
            if progress and i % 256 == 0:
                progress(item.done, total)
        return tokens, "exact: byte tokenizer"
    from engine.estimate.data_size import count_tokens as datacheck_count, load_tokenizer

    try:
        tokenizer = None if c.technique == "scratch" else load_tokenizer(c.model)
    except Exception:  # no usable tokenizer for this model id: count by the bytes-per-token ratio
        tokenizer = None
    dataset = c.dataset if c.dataset != "stdlib" else "stdlib"
    if dataset == "stdlib":  # not a path datacheck knows: count the bytes, the BPE gives fewer
        tokens, _ = count_tokens(Choices(technique="scratch", tokenizer="byte", dataset="stdlib"), progress)
        return tokens, "bytes: an upper bound until the BPE tokenizer is trained"
    from engine.vocabulary import PREFERENCE_TECHNIQUES

    count = datacheck_count(dataset, tokenizer=tokenizer, text_column=c.text_column or None, progress=progress,
                            pairs=c.technique in PREFERENCE_TECHNIQUES)
    return count.tokens, count.method
