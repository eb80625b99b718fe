"""The dashboard's GPU panel: one compact row per local GPU, or a two-line summary where the rows
would crowd out the loss chart; a CPU line on a machine without GPUs.

Row: `GPU3 H100 80GB HBM3 ██████▌░░░ 49.1/80 GiB  util  97%  61 °C  640/700 W`. The row drops the
words, then the name, then the power limit as the panel narrows, and every row of a panel uses the
same columns. Pure functions return Rich Text (unit-tested); the widget only picks the size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widget import Widget

from tui.output import human_bytes
from tui.widgets.bars import usage_bar

if TYPE_CHECKING:
    from engine.machine.probe import GpuInfo

GIB = 1024**3
LEVELS = "▁▂▃▄▅▆▇█"
MUTED = "#9e9e9e"
MIN_BAR, MAX_BAR = 8, 24
NAME_MAX = 18


def short_name(name: str) -> str:
    """`NVIDIA GeForce RTX 4090` -> `RTX 4090`: the vendor is the same on every row."""
    for prefix in ("NVIDIA ", "GeForce ", "Tesla "):
        name = name.removeprefix(prefix)
    return name[:NAME_MAX]


def temp_style(c: int | None) -> str:
    if c is None:
        return MUTED
    return "bold red" if c >= 85 else "yellow" if c >= 75 else ""


def _cells(g: GpuInfo, level: int) -> list[tuple[str, str]]:
    """The row's columns after the bar at detail `level` (0 = most words): (text, style)."""
    used, total = g.memory_used_bytes / GIB, g.memory_total_bytes / GIB
    util = "-" if g.utilization_pct is None else f"{g.utilization_pct}%"
    temp = "-" if g.temperature_c is None else f"{g.temperature_c}"
    power = ""
    if g.power_w is not None:
        power = f"{g.power_w:.0f}/{g.power_limit_w:.0f} W" if g.power_limit_w and level < 2 else f"{g.power_w:.0f}W"
    heat = temp_style(g.temperature_c)
    if level == 0:
        return [(f"{used:.1f}/{total:.0f} GiB", ""), (f"util {util:>4}", "bold"), (f"{temp} °C", heat), (power, MUTED)]
    mem = f"{used:.{0 if used >= 10 else 1}f}/{total:.0f}G"
    return [(mem, ""), (f"{util:>4}", "bold"), (f"{temp}°C", heat), (power, MUTED)]


def gpu_rows(gpus: Sequence[GpuInfo], width: int) -> list[Text]:
    """One row per GPU in `width` cells, with the richest layout that leaves the bar MIN_BAR wide."""
    iw = len(str(max(g.index for g in gpus)))
    nw = max(len(short_name(g.name)) for g in gpus)
    # (detail level, show the name): drop the words first, then the name
    for level, named in ((0, True), (1, True), (2, True), (2, False)):
        cells = [_cells(g, level) for g in gpus]
        widths = [max(len(c[i][0]) for c in cells) for i in range(len(cells[0]))]
        fixed = 3 + iw + 1 + (nw + 1 if named else 0) + sum(w + 2 for w in widths if w) - 1
        if width - fixed >= MIN_BAR or (level, named) == (2, False):
            break
    bar = max(min(width - fixed, MAX_BAR), 1)
    rows = []
    for g, row in zip(gpus, cells, strict=True):
        text = Text.assemble((f"GPU{g.index:<{iw}}", "bold"), " ")
        if named:
            text.append(f"{short_name(g.name):<{nw}} ")
        text.append_text(usage_bar(g.memory_used_bytes, g.memory_total_bytes, bar))
        first = True
        for (cell, style), w in zip(row, widths, strict=True):
            if w:
                text.append(" " if first else "  ")
                text.append(cell.rjust(w) if first else cell.ljust(w), style=style)
                first = False
        text.rstrip()
        text.truncate(width, overflow="ellipsis")
        rows.append(text)
    return rows


def _spread(values: Sequence[float], unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0f}{unit}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}{unit}"


def _levels(shares: Sequence[float], styles: Sequence[str]) -> Text:
    text = Text()
    for s, style in zip(shares, styles, strict=True):
        text.append(LEVELS[min(max(round(s * 7), 0), 7)], style=style)
    return text


def gpu_summary(gpus: Sequence[GpuInfo], width: int) -> list[Text]:
    """Two lines for many GPUs: count, model, temperatures and power; then memory and utilisation as one
    level character per GPU (in index order) with their range."""
    names = {short_name(g.name) for g in gpus}
    head = Text.assemble((f"{len(gpus)} GPUs", "bold"))
    if len(names) == 1:
        head.append(f" {names.pop()}")
    temps = [g.temperature_c for g in gpus if g.temperature_c is not None]
    if temps:
        head.append(f"  {_spread(temps, ' °C')}", style=temp_style(max(temps)))
    watts = [g.power_w for g in gpus if g.power_w is not None]
    if watts:
        total = sum(watts)
        head.append(f"  {total / 1000:.1f} kW" if total >= 1000 else f"  {total:.0f} W", style=MUTED)
    mem = [g.memory_used_bytes / max(g.memory_total_bytes, 1) for g in gpus]
    mem_styles = ["red" if m > 0.9 else "yellow" if m > 0.75 else "green" for m in mem]
    line = Text("mem ").append_text(_levels(mem, mem_styles)).append(f" {_spread([m * 100 for m in mem], '%')}")
    utils = [g.utilization_pct for g in gpus if g.utilization_pct is not None]
    if len(utils) == len(gpus):
        line.append("  util ").append_text(_levels([u / 100 for u in utils], ["bold"] * len(utils)))
        line.append(f" {_spread(utils, '%')}")
    for t in (head, line):
        t.truncate(width, overflow="ellipsis")
    return [head, line]


def cpu_line(rss: float | None, gpu_mem: float | None = None, status: str = "no-driver") -> Text:
    """No GPU here: say so, with the run's own memory instead of an empty panel (or what NVML said)."""
    if status not in ("ok", "no-driver"):
        return Text.assemble(("GPUs", "bold"), (f"  {status}", "yellow"))
    text = Text.assemble(("CPU", "bold"))
    if rss is not None:
        text.append(f"  run's peak RSS {human_bytes(rss)}")
    elif gpu_mem is not None:
        text.append(f"  no GPU visible here; the run's peak GPU memory {human_bytes(gpu_mem)}")
    else:
        text.append("  no GPU here: the run uses the CPU", style=MUTED)
    return text


def row_budget(screen_height: int) -> int:
    """How many per-GPU rows a screen this tall affords and still leaves the chart room (8 at 36 rows)."""
    return max(2, (screen_height - 12) // 2)


class GpuPanel(Widget):
    """The GPU rows (or summary, or CPU line) for the size it is given; `update()` from the screen."""

    DEFAULT_CSS = "GpuPanel { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.gpus: list[GpuInfo] | None = None  # None: not read yet
        self.rss: float | None = None
        self.gpu_mem: float | None = None
        self.status = "ok"

    def update(self, gpus: list[GpuInfo] | None, *, rss: float | None = None, gpu_mem: float | None = None,
               status: str = "ok") -> None:
        old = (self.gpus, self.rss, self.gpu_mem, self.status)
        self.gpus, self.rss, self.gpu_mem, self.status = gpus, rss, gpu_mem, status
        if old != (gpus, rss, gpu_mem, status):  # readings every 2 s: redraw only what changed
            self.refresh(layout=old[0] is None or gpus is None or len(old[0]) != len(gpus))

    def lines(self, width: int, screen_height: int) -> list[Text]:
        if self.gpus is None:
            return []
        if not self.gpus:
            return [cpu_line(self.rss, self.gpu_mem, self.status)]
        if len(self.gpus) > row_budget(screen_height):
            return gpu_summary(self.gpus, width)
        return gpu_rows(self.gpus, width)

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001 (Textual's Size)
        return len(self.lines(width, self.app.size.height))

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.size.width, self.app.size.height))
