"""The drawing functions behind the bars and the loss chart (pure: Rich Text out)."""

from __future__ import annotations

from tui.widgets.bars import Segment, stacked_bar, usage_bar
from tui.widgets.chart import BRAILLE, ChartData, Mark, render_chart


def test_usage_bar_fills_its_share_with_eighths() -> None:
    bar = usage_bar(3, 8, 4)  # 3/8 of 4 cells = 1.5 cells
    assert bar.plain == "█▌  " and len(bar) == 4
    assert usage_bar(0, 8, 4).plain == "    "
    assert usage_bar(9, 8, 4).plain == "████"  # clamped


def test_stacked_bar_marks_the_capacity_when_it_overflows() -> None:
    segs = [Segment("a", 30, "blue"), Segment("b", 30, "red")]
    fits = stacked_bar(segs, 100, 10)
    assert fits.plain == "██████    " and "│" not in fits.plain
    over = stacked_bar(segs, 40, 12)  # 60 on a scale of 60: capacity at 40/60 of the width
    assert len(over) == 12 and over.plain[8] == "│"
    tiny = stacked_bar([Segment("a", 1, "blue"), Segment("b", 1000, "red")], 2000, 10)
    assert tiny.plain.startswith("██")  # a non-zero part never vanishes


def test_chart_draws_falling_loss_marks_and_lr() -> None:
    data = ChartData(train=[(s, 5 - s / 100) for s in range(0, 300, 10)], val=[(100, 4.1), (200, 3.1)],
                     lr=[(s, 1e-3) for s in range(0, 300, 10)], marks=[Mark(200, "◆", "blue")])
    lines = [line.plain for line in render_chart(data, 60, 12)]
    assert len(lines) == 12
    plot = lines[:9]
    first = next(i for i, ch in enumerate(plot[0]) if ord(ch) > BRAILLE)
    last = next(i for i, ch in enumerate(plot[-1]) if ord(ch) > BRAILLE)
    assert first < last  # high on the left, low on the right: the loss falls
    assert "◆" in lines[9] and lines[10].startswith("    LR") and "1.0e-03" in lines[10]
    assert lines[11].strip().startswith("step 0") and lines[11].rstrip().endswith("290")


def test_chart_waits_for_data_and_ignores_nan() -> None:
    assert "waiting" in render_chart(ChartData(), 40, 8)[0].plain
    lines = render_chart(ChartData(train=[(1, float("nan")), (2, 3.0), (3, 2.0)]), 40, 8)
    assert any(ord(ch) > BRAILLE for line in lines for ch in line.plain)
