"""Horizontal bars drawn with block characters: GPU memory in use, and an estimate's breakdown
stacked against the free memory it must fit in. Pure functions return Rich Text (so tests and the
plain wizard can use them); the widgets only pick the width."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True)
class Segment:
    label: str
    value: float
    style: str


def usage_bar(used: float, total: float, width: int, *, style: str = "green", empty: str = "#585858") -> Text:
    """`used` of `total` as a bar `width` cells wide, with eighth-cell resolution."""
    width = max(width, 1)
    share = 0.0 if total <= 0 else min(max(used / total, 0.0), 1.0)
    if share > 0.9:
        style = "red"
    elif share > 0.75:
        style = "yellow"
    eighths = round(share * width * 8)
    full, part = divmod(eighths, 8)
    text = Text("█" * full, style=style)
    if full < width:
        text.append(EIGHTHS[part] if part else " ", style=f"{style} on {empty}" if part else f"on {empty}")
        text.append(" " * (width - full - 1), style=f"on {empty}")
    return text


def stacked_bar(segments: Sequence[Segment], capacity: float, width: int, *, empty: str = "#585858") -> Text:
    """Segments laid end to end on a scale where `width` cells = max(capacity, sum of segments).

    A `│` marks the capacity when the segments overflow it, so "does not fit" is visible at a glance.
    """
    width = max(width, 2)
    total = sum(max(s.value, 0.0) for s in segments)
    scale = max(capacity, total, 1e-9)
    cells: list[str] = []
    start = 0.0
    for seg in segments:
        end = start + max(seg.value, 0.0)
        a, b = round(start / scale * width), round(end / scale * width)
        if b == a and seg.value > 0 and a < width:  # keep every non-zero part visible
            b = a + 1
        cells.extend([seg.style] * max(b - len(cells), 0))
        start = end
    cells = cells[:width]
    text = Text()
    for style in cells:
        text.append("█", style=style)
    text.append(" " * (width - len(cells)), style=f"on {empty}")
    if total > capacity > 0:
        mark = min(round(capacity / scale * width), width - 1)
        text = text[:mark] + Text("│", style="bold white on red") + text[mark + 1:]
    return text


class UsageBar(Widget):
    """A one-line bar of used/total that fills its width."""

    DEFAULT_CSS = "UsageBar { height: 1; width: 1fr; }"

    def __init__(self, used: float = 0, total: float = 1, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.used, self.total = used, total

    def update(self, used: float, total: float) -> None:
        self.used, self.total = used, total
        self.refresh()

    def render(self) -> Text:
        return usage_bar(self.used, self.total, self.size.width)


class StackedBar(Widget):
    """A one-line stacked bar of segments against a capacity."""

    DEFAULT_CSS = "StackedBar { height: 1; width: 1fr; }"

    def __init__(self, segments: Sequence[Segment] = (), capacity: float = 1, *, id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.segments, self.capacity = list(segments), capacity

    def update(self, segments: Sequence[Segment], capacity: float) -> None:
        self.segments, self.capacity = list(segments), capacity
        self.refresh()

    def render(self) -> Text:
        return stacked_bar(self.segments, self.capacity, self.size.width)
