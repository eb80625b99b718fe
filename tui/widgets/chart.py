"""A loss chart in Unicode braille (2x4 dots a cell): train and validation loss, markers for
checkpoints and control events on a row of their own, and the learning rate as a strip of block
characters underneath, all on the same step axis. Further curves (`ChartData.extra`) are drawn beneath
them in their own style: a run's branches abandoned by a rollback, dimmed, or other runs overlaid by the
compare view. No dependency beyond Rich."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.widget import Widget

BRAILLE = 0x2800
# dot bit for (column 0/1, row 0..3) within a cell
DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
BLOCKS = "▁▂▃▄▅▆▇█"
GUTTER = 7  # y-axis labels

Point = tuple[float, float]


@dataclass(frozen=True)
class Mark:
    step: float
    char: str
    style: str


@dataclass(frozen=True)
class Series:
    points: list[Point]
    style: str
    label: str = ""


DIMMED = "#585858"  # a branch a rollback abandoned


@dataclass
class ChartData:
    train: list[Point] = field(default_factory=list)
    val: list[Point] = field(default_factory=list)
    lr: list[Point] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    extra: list[Series] = field(default_factory=list)  # drawn first, beneath train and val


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.1e}" if abs(v) < 0.01 else f"{v:.0f}"
    return f"{v:.3g}"


def _finite(points: Sequence[Point]) -> list[Point]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def render_chart(data: ChartData, width: int, height: int) -> list[Text]:
    """`height` lines of `width` cells: the plot, the marker row, the LR strip, the step axis."""
    plot_h = max(height - 3, 1)
    plot_w = max(width - GUTTER, 4)
    train, val = _finite(data.train), _finite(data.val)
    extra = [(_finite(s.points), s.style) for s in data.extra]
    everything = train + val + [p for points, _ in extra for p in points]
    lines: list[Text] = []
    if not everything:
        lines.append(Text(" " * GUTTER + "waiting for the first logged loss…", style="#9e9e9e"))
        return lines + [Text("")] * (height - 1)
    xs = [p[0] for p in everything] + [p[0] for p in data.lr] + [m.step for m in data.marks]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    ys = [p[1] for p in everything]
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    dots_w, dots_h = plot_w * 2, plot_h * 4

    def px(x: float) -> int:
        return min(int((x - x0) / (x1 - x0) * (dots_w - 1) + 0.5), dots_w - 1)

    def py(y: float) -> int:
        return min(max(int((y1 - y) / (y1 - y0) * (dots_h - 1) + 0.5), 0), dots_h - 1)

    grid = [[0] * plot_w for _ in range(plot_h)]
    owner = [[""] * plot_w for _ in range(plot_h)]

    def plot(points: list[Point], style: str) -> None:
        prev: tuple[int, int] | None = None
        for x, y in points:
            cur = (px(x), py(y))
            steps = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1) if prev else 1
            for i in range(1, steps + 1) if prev else (1,):
                if prev:
                    dx = prev[0] + (cur[0] - prev[0]) * i // steps
                    dy = prev[1] + (cur[1] - prev[1]) * i // steps
                else:
                    dx, dy = cur
                grid[dy // 4][dx // 2] |= DOTS[dx % 2][dy % 4]
                owner[dy // 4][dx // 2] = style
            prev = cur

    for points, style in extra:
        plot(points, style)
    plot(train, "cyan")
    plot(val, "bold yellow")
    for r in range(plot_h):
        label = fmt(y1 - (y1 - y0) * r / max(plot_h - 1, 1)) if r in (0, plot_h - 1) or r == plot_h // 2 else ""
        line = Text(f"{label:>{GUTTER - 1}}┤" if label else " " * (GUTTER - 1) + "│", style="#9e9e9e")
        _append_runs(line, [(chr(BRAILLE + b) if b else " ", owner[r][c] if b else "") for c, b in enumerate(grid[r])])
        lines.append(line)
    marks = [" "] * plot_w
    mark_styles = [""] * plot_w
    for m in data.marks:
        c = px(m.step) // 2
        marks[c], mark_styles[c] = m.char, m.style
    row = Text(" " * (GUTTER - 1) + "│", style="#9e9e9e")
    _append_runs(row, list(zip(marks, mark_styles)))
    lines.append(row)
    lines.append(lr_strip(data.lr, plot_w, px))
    axis = Text(" " * GUTTER)
    left, right = f"step {fmt(x0)}", fmt(x1)
    axis.append(left + " " * max(plot_w - len(left) - len(right), 1) + right, style="#9e9e9e")
    lines.append(axis)
    return lines


def _append_runs(text: Text, cells: list[tuple[str, str]]) -> None:
    """Append (char, style) cells as runs of one style each: one append per run, not per cell."""
    run, style = [], None
    for ch, st in cells:
        if st != style and run:
            text.append("".join(run), style=style or "")
            run = []
        run.append(ch)
        style = st
    if run:
        text.append("".join(run), style=style or "")


def lr_strip(lr: Sequence[Point], plot_w: int, px) -> Text:  # noqa: ANN001 (the chart's x mapping)
    points = _finite(lr)
    text = Text(f"{'LR':>{GUTTER - 1}}│", style="#9e9e9e")
    if not points:
        return text
    top = max(p[1] for p in points) or 1.0
    cells: list[float | None] = [None] * plot_w
    for x, y in points:
        cells[px(x) // 2] = y
    last: float | None = None
    chars = []
    for v in cells:
        v = last if v is None else v
        last = v
        chars.append(" " if v is None else BLOCKS[min(int(v / top * (len(BLOCKS) - 1) + 0.5), len(BLOCKS) - 1)])
    text.append("".join(chars), style="magenta")
    text.append(f" {fmt(points[-1][1])}", style="magenta")
    return text


class LossChart(Widget):
    """The chart, redrawn to its size; `update(data)` from the dashboard as events arrive."""

    DEFAULT_CSS = "LossChart { height: 1fr; min-height: 6; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.data = ChartData()

    def update(self, data: ChartData) -> None:
        self.data = data
        self.refresh()

    def render(self) -> Text:
        lines = render_chart(self.data, self.size.width - 9, self.size.height)  # room for the LR value
        return Text("\n").join(lines)
