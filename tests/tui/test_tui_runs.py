"""The runs list on start-up: shown only when runs exist, opens a run's dashboard, comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui_helpers import fake_run, fixed_report, screen_text, wait_until

from tui.app import make_app
from tui.screens.dashboard import DashboardScreen
from tui.screens.hardware import HardwareScreen
from tui.screens.runs import RunsScreen, recent_losses, sparkline


def two_runs(root: Path) -> None:
    fake_run(root, name="20260101-120000-demo-abcd")
    fake_run(root, name="20260102-090000-tiny-ef01", state="done", steps=100)


async def test_no_runs_no_list(tmp_path) -> None:
    app = make_app(hardware=fixed_report("none"), runs_dir=str(tmp_path / "runs"))
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.screen, HardwareScreen)
        await pilot.press("a")  # dimmed: no runs to list
        assert isinstance(app.screen, HardwareScreen)


async def test_list_opens_a_dashboard_and_detach_comes_back(tmp_path) -> None:
    two_runs(tmp_path)
    app = make_app(hardware=fixed_report("none"), runs_dir=str(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.screen, RunsScreen)
        text = screen_text(app)
        assert text.index("20260102-090000-tiny-ef01") < text.index("20260101-120000-demo-abcd")  # newest first
        assert "done" in text and "running" in text and "▁" in text
        await pilot.press("down", "enter")
        assert isinstance(app.screen, DashboardScreen) and app.screen.run.name == "20260101-120000-demo-abcd"
        await wait_until(pilot, lambda: app.screen.history.step == 300)
        await pilot.press("d")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("n")
        assert isinstance(app.screen, HardwareScreen)
        await pilot.press("a")  # back to the list from the first step
        assert isinstance(app.screen, RunsScreen)


def test_sparkline_reads_the_tail(tmp_path) -> None:
    run = fake_run(tmp_path, steps=300)
    losses = recent_losses(run, n=5)
    assert len(losses) == 5 and losses == sorted(losses, reverse=True)
    assert str(sparkline([3.0, 2.0, 1.0])) == "█▄▁"


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_snapshot_runs_list(snap_compare, tmp_path, monkeypatch, size) -> None:
    monkeypatch.chdir(tmp_path)
    two_runs(tmp_path / "runs")
    assert snap_compare(make_app(hardware=fixed_report("none"), runs_dir="runs"), terminal_size=size)
