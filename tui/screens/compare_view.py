"""What the compare view draws, shared with `llm-wizard runs compare`: the table of runs side by side (technique,
steps, best eval loss, tokens/s, peak memory, then the settings that differ) and the chart of their loss curves,
one colour a run, each run's abandoned branches dimmed in its colour."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from engine.track.compare import RunSummary
from tui.output import human_bytes
from tui.widgets.chart import ChartData, Mark, Series

COLOURS = ("cyan", "bold yellow", "green", "magenta", "bright_blue", "red", "white", "bright_green")
DIM = {"cyan": "#2f6f7f", "bold yellow": "#7f7f2f", "green": "#2f6f2f", "magenta": "#6f2f6f",
       "bright_blue": "#3f4f8f", "red": "#7f2f2f", "white": "#6f6f6f", "bright_green": "#4f8f4f"}
MUTED = "#9e9e9e"


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _value(v: Any) -> str:
    return "-" if v is None else str(v)


def compare_table(runs: list[RunSummary], differences: dict[str, list[Any]]) -> Table:
    """One column a run (in its curve's colour), a row a number, then a row a differing setting."""
    table = Table(title="runs compared", title_justify="left", show_lines=False)
    table.add_column("", style=MUTED, no_wrap=True)
    for i, r in enumerate(runs):
        table.add_column(Text(r.id, style=colour(i)), justify="right", overflow="fold")
    rows: list[tuple[str, list[str]]] = [
        ("technique", [r.technique for r in runs]),
        ("state", [r.state for r in runs]),
        ("steps", [f"{r.steps:,}" for r in runs]),
        ("best eval loss", ["-" if r.best_eval_loss is None else f"{r.best_eval_loss:.4f} @ {r.best_step:,}"
                            for r in runs]),
        ("last loss", ["-" if r.last_loss is None else f"{r.last_loss:.4f}" for r in runs]),
        ("tokens/s", ["-" if r.tok_per_s is None else f"{r.tok_per_s:,.0f}" for r in runs]),
        ("peak memory", [human_bytes(r.peak_mem) if r.peak_mem is not None else "-" for r in runs]),
        ("rolled-back branches", [str(len(r.abandoned)) for r in runs]),
    ]
    for name, values in rows:
        table.add_row(name, *values)
    if differences:
        table.add_section()
        for key, values in differences.items():
            table.add_row(key, *(_value(v) for v in values))
    else:
        table.add_row(Text("specs", style=MUTED), *(["identical"] * len(runs)))
    return table


def compare_chart(runs: list[RunSummary]) -> ChartData:
    """Every run's train loss as a curve of its colour (abandoned branches dimmed), rollback points marked."""
    extra: list[Series] = []
    marks: list[Mark] = []
    for i, r in enumerate(runs):
        for branch in r.abandoned:
            extra.append(Series(list(branch.train), DIM.get(colour(i), MUTED), f"{r.id} abandoned"))
            marks.append(Mark(float(branch.origin_step), "↺", colour(i)))
    for i, r in enumerate(runs):
        extra.append(Series(list(r.train), colour(i), r.id))
    return ChartData(marks=marks, extra=extra)


def legend(runs: list[RunSummary]) -> Text:
    text = Text()
    for i, r in enumerate(runs):
        text.append("━━ ", style=colour(i))
        text.append(r.id + "   ")
    if any(r.abandoned for r in runs):
        text.append("dim: a branch a rollback left (↺ where it went back)", style=MUTED)
    return text
