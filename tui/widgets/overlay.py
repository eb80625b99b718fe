"""Several curves overlaid on one braille chart (2x4 dots a cell), each in its own colour, with a legend: the
sweep's trials' loss curves, and lr-find's loss against a logarithmic learning-rate axis. Rich only; the same
lines print in a terminal (`llm-wizard lr-find`) and draw in the sweep view (`OverlayChart`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.widget import Widget

from tui.widgets.chart import BRAILLE, DOTS, GUTTER, _append_runs, fmt

PALETTE = ("cyan", "yellow", "magenta", "green", "red", "blue", "bright_white", "orange3", "purple", "spring_green3")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    style: str = "cyan"


@dataclass
class Overlay:
    series: list[Series] = field(default_factory=list)
    x_label: str = "step"
    log_x: bool = False
    marker: float | None = None  # an x to mark with a vertical line (lr-find's suggestion)


def render_overlay(data: Overlay, width: int, height: int) -> list[Text]:
    """`height` lines of `width` cells: the plot, the x axis, a legend line."""
    def x_of(x: float) -> float:
        return math.log10(x) if data.log_x else x

    series = [(s, [(x_of(x), y) for x, y in s.points if math.isfinite(y) and (x > 0 or not data.log_x)])
              for s in data.series]
    everything = [p for _, pts in series for p in pts]
    if not everything:
        return [Text(" " * GUTTER + "no points yet", style="#9e9e9e")] + [Text("")] * (height - 1)
    plot_h, plot_w = max(height - 2, 1), max(width - GUTTER, 4)
    xs, ys = [p[0] for p in everything], [p[1] for p in everything]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    dots_w, dots_h = plot_w * 2, plot_h * 4
    grid = [[0] * plot_w for _ in range(plot_h)]
    owner = [[""] * plot_w for _ in range(plot_h)]

    def px(x: float) -> int:
        return min(max(int((x - x0) / (x1 - x0) * (dots_w - 1) + 0.5), 0), dots_w - 1)

    def py(y: float) -> int:
        return min(max(int((y1 - y) / (y1 - y0) * (dots_h - 1) + 0.5), 0), dots_h - 1)

    def dot(dx: int, dy: int, style: str) -> None:
        grid[dy // 4][dx // 2] |= DOTS[dx % 2][dy % 4]
        owner[dy // 4][dx // 2] = style

    if data.marker is not None and data.marker > 0:
        mx = px(x_of(data.marker))
        for dy in range(0, dots_h, 2):
            dot(mx, dy, "dim white")
    for s, pts in series:
        prev: tuple[int, int] | None = None
        for x, y in sorted(pts):
            cur = (px(x), py(y))
            n = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1) if prev else 1
            for i in range(1, n + 1):
                dot(prev[0] + (cur[0] - prev[0]) * i // n, prev[1] + (cur[1] - prev[1]) * i // n, s.style) \
                    if prev else dot(*cur, s.style)
            prev = cur
    lines: list[Text] = []
    for r in range(plot_h):
        label = fmt(y1 - (y1 - y0) * r / max(plot_h - 1, 1)) if r in (0, plot_h - 1) or r == plot_h // 2 else ""
        line = Text(f"{label:>{GUTTER - 1}}┤" if label else " " * (GUTTER - 1) + "│", style="#9e9e9e")
        _append_runs(line, [(chr(BRAILLE + b) if b else " ", owner[r][c] if b else "") for c, b in enumerate(grid[r])])
        lines.append(line)
    left = f"{data.x_label} {fmt(10 ** x0 if data.log_x else x0)}"
    right = fmt(10 ** x1 if data.log_x else x1)
    axis = Text(" " * GUTTER)
    axis.append(left + " " * max(plot_w - len(left) - len(right), 1) + right, style="#9e9e9e")
    lines.append(axis)
    legend = Text(" " * GUTTER)
    for s, _ in series:
        legend.append("━ ", style=s.style)
        legend.append(f"{s.label}  ", style="#9e9e9e")
    lines.append(legend)
    return lines[:height]


class OverlayChart(Widget):
    """The overlaid chart, redrawn to its size; `update(data)` as the sweep's trials report."""

    DEFAULT_CSS = "OverlayChart { height: 1fr; min-height: 6; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.data = Overlay()

    def update(self, data: Overlay) -> None:
        self.data = data
        self.refresh()

    def render(self) -> Text:
        return Text("\n").join(render_overlay(self.data, self.size.width - 1, self.size.height))
