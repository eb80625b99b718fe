"""Runs side by side: their loss curves overlaid on one chart (each run's rolled-back branches dimmed), and the
table of `llm-wizard runs compare` beneath. Read from the run folders by a thread worker (a long run's events
take a moment); r reads them again."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.messages import Compared
from tui.screens.compare_view import compare_chart, compare_table, legend
from tui.widgets.chart import LossChart


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back to the runs"),
        Binding("r", "refresh", "Refresh", tooltip="Read the run folders again"),
    ]

    def __init__(self, runs: list[str | Path]) -> None:
        super().__init__()
        self.runs = [Path(r) for r in runs]
        self.summaries: list[object] = []  # set when the worker has read them

    def compose(self) -> ComposeResult:
        yield Static("", id="compare-legend")
        yield LossChart(id="compare-chart")
        with VerticalScroll(id="compare-table-box"):
            yield Static("", id="compare-table")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        self.read_runs()

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare")
    def read_runs(self) -> None:
        from engine.track.compare import spec_differences, summarize

        self.post_message(Compared([summarize(run) for run in self.runs], spec_differences(self.runs)))

    def on_compared(self, message: Compared) -> None:
        self.summaries = message.summaries
        self.query_one("#compare-legend", Static).update(legend(message.summaries))
        self.query_one(LossChart).update(compare_chart(message.summaries))
        self.query_one("#compare-table", Static).update(compare_table(message.summaries, message.differences))

    def action_back(self) -> None:
        self.app.pop_screen()
