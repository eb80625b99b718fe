"""One data path from file to trained tokens, for `train`, `estimate`, `llm-wizard data` and the wizard.

`prepare(source, tokenizer, seq_len)` applies the chat template to the tokenizer (a named one adds its
special tokens), renders and tokenizes every example once into the token cache
(engine/data/example_file.py, or engine/data/token_cache.py for plain text files), packs the blocks
(engine/data/pack.py) and returns them with a `DataReport`: the same numbers wherever they are asked for,
because they come from the same cached files and the same packing.

    prepared = prepare(DataSource.from_spec(spec.data), tokenizer, spec.train.seq_len)
    prepared.report.to_json()   # {"format", "examples", "tokens", "trained_tokens", "truncated", "dropped", ...}
    shown = show_examples(prepared, tokenizer, 3)   # the first examples exactly as trained
    check(source)                # before a run folder exists: files found, layout detected, first rows valid
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.data import chat_templates
from engine.data.sources import DataSource
from engine.data.token_cache import TokenBlocks

if TYPE_CHECKING:
    from engine.spec import RunSpec


@dataclass(frozen=True)
class Shown:
    """One example exactly as trained: ids, their text pieces, the loss mask, which ids are special."""
    ids: list[int]
    text: str
    mask: list[int]
    pieces: list[str]
    special: list[bool]


@dataclass(frozen=True)
class DataReport:
    format: str  # the layout: messages, sharegpt, alpaca, prompt_response, chosen, preference, label, text, slack
    source: str  # what was read ("jsonl hub_folder", "text files", ...)
    template: str  # the chat template used: model, a named one, plain, custom; "" for plain text
    train_on: str
    examples: int  # examples trained (whole or truncated); documents for plain text
    tokens: int  # tokens in the blocks the trainer sees
    trained_tokens: int  # of those, the targets that carry the loss
    truncated: int  # examples cut to the block (their prompt and first reply kept)
    dropped: int  # examples left out (the reply past the block, or nothing to train)
    skipped_rows: int  # bad rows left out under data.on_bad_row = "skip"
    blocks: int
    seq_len: int
    added_tokens: tuple[str, ...] = ()  # special tokens the template added to the tokenizer
    warnings: tuple[str, ...] = ()
    shown: tuple[Shown, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """The numbers without the examples (for the run's events)."""
        return {k: v for k, v in self.to_json().items() if k != "shown"}

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shown"] = [{"ids": s.ids, "text": s.text, "mask": s.mask} for s in self.shown]
        out["added_tokens"] = list(self.added_tokens)
        out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True)
class Prepared:
    blocks: TokenBlocks
    fingerprint: str
    report: DataReport
    added_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checked:
    """What `check` found: the layout, the rows it read and those it skipped (data.on_bad_row = "skip")."""
    format: str
    source: str
    rows: int
    skipped: int


def check(source: DataSource, sample_rows: int = 1000) -> Checked:
    """The data checks that need no tokenizer, for `train` and the wizard before a run folder exists: the files
    located, the layout detected, and the first `sample_rows` rows read and validated (a bad row raises
    UserError naming its file:line, unless data.on_bad_row = "skip"); text files are read whole through the
    corpus checks (empty, binary, not UTF-8). The job reads every row again."""
    import itertools

    from engine.data.corpus import check_text_files
    from engine.data.sources import Skipped, iter_items
    from engine.spec import STDLIB

    if source.kind == "text":
        if source.path != STDLIB:  # Python's own source: always there, and 13 MB to read for nothing
            check_text_files(source.files())
        return Checked("text", source.describe(), 0, 0)
    skipped = Skipped()
    rows = sum(1 for _ in itertools.islice(iter_items(source, skipped), sample_rows))
    return Checked(source.layout().format, source.describe(), rows, skipped.count)


def apply_template(source: DataSource, tokenizer: Any) -> tuple[chat_templates.ChatTemplate | None, list[str]]:
    """The chat template the source is rendered with, set on the tokenizer; the special tokens it added."""
    if source.kind == "text" or not source.is_chat:
        return None, []
    template = chat_templates.resolve(source.template, tokenizer)
    return template, chat_templates.apply(template, tokenizer)


def prepare(source: DataSource, tokenizer: Any, seq_len: int, *, val_fraction: float = 0.05, seed: int = 0,
            cache_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Prepared:
    """Blocks and report for any source (see the module docstring)."""
    from engine.data.example_file import build_example_file
    from engine.data.pack import PackedBlocks
    from engine.data.render import Renderer
    from engine.data.token_cache import build_token_file
    from engine.errors import UserError

    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token to end examples; set tokenizer.eos_token", field="tokenizer")
    if source.kind == "text":
        token_file = build_token_file(source.files(), tokenizer, cache_dir=cache_dir, progress=progress,
                                      should_stop=should_stop)
        blocks = TokenBlocks(token_file, seq_len, val_fraction, seed)
        report = DataReport("text", "text files", "", "all", 0, token_file.n_tokens, token_file.n_tokens - 1, 0, 0,
                            0, blocks.n_train_blocks + blocks.n_val_blocks, seq_len)
        blocks.report = report
        return Prepared(blocks, token_file.fingerprint, report)
    template, added = apply_template(source, tokenizer)
    warnings = []
    if template is not None and template.name == "plain" and source.template in ("auto", ""):
        warnings.append("the tokenizer has no chat template: examples are trained in the plain '### Prompt:' "
                        "layout; for a chat model choose one (data.template = chatml, llama-3, ...)")
    if source.layout().format == "preference":  # pairs for dpo/orpo (engine/data/preference.py)
        return _pairs(source, tokenizer, template or chat_templates.resolve("plain", tokenizer), seq_len, added,
                      warnings, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir, progress=progress,
                      should_stop=should_stop)
    renderer = Renderer(tokenizer, template or chat_templates.resolve("plain", tokenizer),
                        source.train_on if source.is_chat else "assistant")
    example_file = build_example_file(source, renderer, cache_dir=cache_dir, progress=progress,
                                      should_stop=should_stop)
    layout = source.layout()
    if layout.format == "text":  # documents from a table's text column: a stream, as plain text files
        blocks: TokenBlocks = TokenBlocks(example_file.token_file, seq_len, val_fraction, seed)
        n = example_file.token_file.n_tokens
        numbers = (example_file.n_examples, n, n - 1, 0, 0, blocks.n_train_blocks + blocks.n_val_blocks)
    else:
        blocks = PackedBlocks(example_file, seq_len, val_fraction, seed, packing=source.packing,
                              pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                              else tokenizer.eos_token_id)
        lay = blocks.layout
        numbers = (lay.examples, lay.tokens, lay.trained, lay.truncated, lay.dropped, len(lay.start))
        if lay.truncated or lay.dropped:
            warnings.append(f"{lay.truncated} examples truncated and {lay.dropped} dropped at train.seq_len = "
                            f"{seq_len}; raise it to keep them whole")
    if example_file.skipped:
        warnings.append(f"{example_file.skipped} bad rows skipped, e.g. {example_file.skipped_first[0]}")
    report = DataReport(layout.format, source.describe(), template.name if template else "",
                        source.train_on if source.is_chat else "assistant", *numbers[:5],
                        example_file.skipped, numbers[5], seq_len, tuple(added), tuple(warnings))
    blocks.report = report
    return Prepared(blocks, example_file.token_file.fingerprint, report, tuple(added))


def _pairs(source: DataSource, tokenizer: Any, template: chat_templates.ChatTemplate, seq_len: int, added: list[str],
           warnings: list[str], **kw: Any) -> Prepared:
    """prepare() for preference pairs: the report counts pairs (examples and blocks are pairs)."""
    from engine.data.preference import pair_blocks

    blocks = pair_blocks(source, tokenizer, template, seq_len, **kw)
    lay, skipped = blocks.layout, blocks.example_file.skipped
    if lay.truncated or lay.dropped:
        warnings.append(f"{lay.truncated} preference pairs had the start of their prompt cut and {lay.dropped} were "
                        f"dropped at train.seq_len = {seq_len}; raise it to keep them whole")
    if skipped:
        warnings.append(f"{skipped} bad rows skipped, e.g. {blocks.example_file.skipped_first[0]}")
    report = DataReport("preference", source.describe(), template.name, "pairs", lay.pairs, lay.tokens, lay.trained,
                        lay.truncated, lay.dropped, skipped, lay.pairs, seq_len, tuple(added), tuple(warnings))
    blocks.report = report
    return Prepared(blocks, blocks.example_file.token_file.fingerprint, report, tuple(added))


class DataContext(Protocol):
    """What source_blocks needs from a technique's setup (engine.techniques.base.SetupContext is one): the
    data lives below the techniques, so it names the shape, not the class."""
    spec: RunSpec

    def progress(self, message: str) -> None: ...

    def should_stop(self) -> bool: ...


def source_blocks(ctx: DataContext, tokenizer: Any, model: Any = None, *, packing: bool = True,
                  pairs: bool = False) -> Prepared:
    """The run's data as blocks, for a technique's setup(): its template applied to `tokenizer` (new special
    tokens get embedding rows in `model`), progress and the stop request honoured. `packing=False`: one
    example a block whatever data.packing says (a technique whose model cannot take position ids).
    `pairs=True`: the rows are preference pairs, served by engine/data/preference.py's PairBlocks."""
    from dataclasses import replace

    from engine.data.pack import packing_isolates, resize_embeddings

    spec = ctx.spec
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 1.0:
            last[0] = time.monotonic()
            ctx.progress(f"tokenizing: {done / max(total, 1):.0%} of {total / 1e6:.1f} MB")

    source = DataSource.from_spec(spec.data)
    if pairs:
        source = replace(source, pairs=True, packing=False)
    if not packing:
        source = replace(source, packing=False)
    fallback = source.packing and not pairs and model is not None and source.kind != "text" and source.masks \
        and not packing_isolates(model)
    if fallback:
        source = replace(source, packing=False)
    prepared = prepare(source, tokenizer, spec.train.seq_len,
                       val_fraction=spec.data.val_fraction, seed=spec.seed, progress=progress,
                       should_stop=ctx.should_stop)
    if prepared.added_tokens and model is not None:
        resize_embeddings(model, tokenizer)
    if fallback:
        note = (f"{type(model).__name__} does not keep packed examples apart by their position ids: one example "
                "a sequence instead (padding; data.packing = false)")
        ctx.progress(note)
        prepared = replace(prepared, report=replace(prepared.report, warnings=(*prepared.report.warnings, note)))
    return prepared


def example_blocks(source: Any, tokenizer: Any, seq_len: int, *, val_fraction: float = 0.05, seed: int = 0,
                   cache_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> tuple[TokenBlocks, str]:
    """(blocks, data fingerprint) for any source (prepare() without the report)."""
    prepared = prepare(source, tokenizer, seq_len, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir,
                       progress=progress, should_stop=should_stop)
    return prepared.blocks, prepared.fingerprint


def show_examples(prepared: Prepared, tokenizer: Any, n: int) -> list[Shown]:
    """The first `n` examples as the trainer sees them (the first block's tokens for plain text)."""
    import numpy as np

    from engine.data.pack import PackedBlocks

    blocks = prepared.blocks
    special_ids = _special_ids(tokenizer)
    shown: list[Shown] = []
    if isinstance(blocks, PackedBlocks):
        index = blocks.example_file.index()
        for start, length, _, _ in index[:n].tolist():
            length = min(length, blocks.seq_len + 1)
            ids = np.asarray(blocks._tokens[start:start + length], dtype=np.int64).tolist()
            mask = (np.asarray(blocks._mask[start:start + length]) & 1).astype(int).tolist()
            shown.append(_shown(ids, mask, tokenizer, special_ids))
    else:
        for k in range(min(n, blocks.n_train_blocks)):
            row = blocks._tokens[k * blocks.seq_len:(k + 1) * blocks.seq_len + 1]
            ids = np.asarray(row, dtype=np.int64).tolist()
            shown.append(_shown(ids, [0] + [1] * (len(ids) - 1), tokenizer, special_ids))
    return shown


def first_shown(source: DataSource, tokenizer: Any, n: int) -> list[Shown]:
    """The first `n` examples rendered as the run will render them (the template applied to `tokenizer`), without
    reading the rest of the data: a quick preview (not cut to a block; plain text: each document whole)."""
    import itertools

    from engine.data.render import Renderer, RenderError
    from engine.data.sources import iter_items
    from engine.errors import UserError

    template, _ = apply_template(source, tokenizer)
    renderer = Renderer(tokenizer, template or chat_templates.resolve("plain", tokenizer),
                        source.train_on if source.is_chat else "assistant")
    items = list(itertools.islice(iter_items(source), n))
    try:
        encoded = renderer.encode([item.value for item in items])
    except RenderError as exc:
        raise UserError(f"{items[exc.index].where}: {exc}", field="data.template") from None
    special_ids = _special_ids(tokenizer)
    return [_shown(e.ids.tolist(), e.mask.astype(int).tolist(), tokenizer, special_ids) for e in encoded]


def rendered_texts(source: DataSource, should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
    """Every example's text as training renders it, for training a tokenizer on what the model will read: a
    document's text; a conversation through the source's chat template as a new tokenizer takes it (the plain
    layout unless data.template names one). Bad rows raise UserError naming file:line (or are skipped, per
    data.on_bad_row); should_stop() raises PreparationStopped."""
    from engine.data.corpus import PreparationStopped
    from engine.data.formats import Document
    from engine.data.render import Renderer, RenderError
    from engine.data.sources import iter_items
    from engine.data.tokenizer_train import train_tokenizer
    from engine.errors import UserError

    vehicle = train_tokenizer([], "byte", 0)  # no chat template of its own: a new tokenizer's view
    template, _ = apply_template(source, vehicle)
    renderer = Renderer(vehicle, template or chat_templates.resolve("plain", vehicle), source.train_on)
    for item in iter_items(source):
        if should_stop is not None and should_stop():
            raise PreparationStopped(f"stopped while reading {source.path} to train the tokenizer")
        value = item.value
        if isinstance(value, Document):
            yield value.text
            continue
        try:
            yield renderer.render(value.messages, value.tools)[0]  # type: ignore[union-attr]
        except RenderError as exc:
            raise UserError(f"{item.where}: {exc}", field="data.template") from None


def _special_ids(tokenizer: Any) -> set[int]:
    """The ids shown as special: the named special tokens and every added token marked special (chat markers
    such as <|im_start|> are often only the latter)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(getattr(tokenizer, "all_special_ids", [])) | {i for i, t in added.items() if getattr(t, "special", False)}


def _shown(ids: list[int], mask: list[int], tokenizer: Any, special_ids: set[int]) -> Shown:
    pieces = [tokenizer.decode([i]) for i in ids]
    return Shown(ids, tokenizer.decode(ids), mask, pieces, [i in special_ids for i in ids])


def with_shown(prepared: Prepared, tokenizer: Any, n: int) -> DataReport:
    """The report with the first `n` examples as trained."""
    from dataclasses import replace

    return replace(prepared.report, shown=tuple(show_examples(prepared, tokenizer, n)))
