"""Examples as trained, for people: the report's numbers and each example's text with its loss mask.

Shared by `llm-wizard data` and the wizard's Data step (rich Text, no Textual). In a terminal the parts
without loss are dim and special tokens highlighted; as plain text (a pipe, a log) the trained parts
are written between {+ and +} so the mask survives without colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text

TRAINED_STYLE = ""
MASKED_STYLE = "dim"
SPECIAL_STYLE = "bold magenta"
OPEN, CLOSE = "{+", "+}"  # plain text: where the trained parts start and end


def segments(shown: Any, decode: Callable[[list[int]], str] | None = None) -> list[tuple[str, bool, bool]]:
    """(text, trained, special) runs of an engine.data.prepare.Shown: consecutive tokens alike decoded together
    (a character split over two byte-level tokens reads whole), else the per-token pieces joined."""
    runs: list[tuple[str, bool, bool]] = []
    start = 0
    n = len(shown.ids)
    for k in range(1, n + 1):
        if k < n and (bool(shown.mask[k]), shown.special[k]) == (bool(shown.mask[start]), shown.special[start]):
            continue
        text = decode(shown.ids[start:k]) if decode is not None else "".join(shown.pieces[start:k])
        runs.append((text, bool(shown.mask[start]), shown.special[start]))
        start = k
    return runs


def example_text(shown: Any, *, plain: bool = False, decode: Callable[[list[int]], str] | None = None,
                 limit: int = 0) -> Text:
    """One example: dim where no loss, special tokens highlighted; `plain`: {+trained+} markers instead.
    `limit` > 0 keeps about that many characters (a preview), ending in an ellipsis."""
    out = Text()
    trained_open = False
    for text, trained, special in segments(shown, decode):
        if plain and trained != trained_open:
            out.append(OPEN if trained else CLOSE)
            trained_open = trained
        style = SPECIAL_STYLE if special else (TRAINED_STYLE if trained else MASKED_STYLE)
        if special and not trained and not plain:
            style = f"{SPECIAL_STYLE} dim"
        out.append(text, style=None if plain else style)
        if limit and len(out.plain) > limit:
            out.truncate(limit)
            out.append("…")
            return out
    if plain and trained_open:
        out.append(CLOSE)
    return out


def legend(plain: bool) -> Text:
    if plain:
        return Text(f"trained tokens are between {OPEN} and {CLOSE}; the rest carries no loss")
    return Text.assemble("trained", " · ", ("no loss", MASKED_STYLE), " · ", ("special token", SPECIAL_STYLE))


def report_rows(report: Any) -> list[tuple[str, str]]:
    """(name, value) lines of an engine.data.prepare.DataReport."""
    r = report
    share = f" ({r.trained_tokens / r.tokens:.0%})" if r.tokens else ""
    rows = [("format", r.format), ("source", r.source)]
    if r.template:
        rows.append(("template", _template(r.template)))
        rows.append(("train on", r.train_on))
    rows += [("examples", f"{r.examples:,}"), ("tokens", f"{r.tokens:,} in {r.blocks:,} blocks of "
                                                          f"{r.seq_len} (train.seq_len)"),
             ("trained tokens", f"{r.trained_tokens:,}{share}"),
             ("truncated", f"{r.truncated:,}"), ("dropped", f"{r.dropped:,}"),
             ("skipped rows", f"{r.skipped_rows:,}")]
    if r.added_tokens:
        rows.append(("added tokens", ", ".join(r.added_tokens) + " (special tokens the template adds; the run "
                                                                  "trains their embeddings)"))
    return rows


def _template(name: str) -> str:
    return {"model": "the model's own chat template", "plain": "plain (### Prompt / ### Response)",
            "custom": "custom ({prompt} / {response})"}.get(name, f"{name} (named)")


def describe_examples(shown: Sequence[Any], *, plain: bool, decode: Callable[[list[int]], str] | None = None,
                      limit: int = 0) -> list[Text]:
    """A heading and the text of each example, as `llm-wizard data` prints them."""
    lines: list[Text] = []
    for k, s in enumerate(shown, 1):
        trained = sum(1 for m in s.mask if m)
        lines.append(Text(f"example {k}: {len(s.ids)} tokens, {trained} trained", style="bold"))
        lines.append(example_text(s, plain=plain, decode=decode, limit=limit))
    return lines
