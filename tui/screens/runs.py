"""The runs on this machine, shown on start-up when there are any: state, step, loss with a
sparkline of its recent history; Enter attaches to one, n starts the wizard for a new run, space marks runs
and c compares them (their loss curves overlaid: tui/screens/compare.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.runfolder import events as ev
from tui.screens.dashboard_view import STATE_STYLE
from tui.widgets.chart import BLOCKS

TAIL_BYTES = 64 * 1024  # the sparkline reads only the end of events.jsonl, however long the run


def recent_losses(run: Path, n: int = 24) -> list[float]:
    try:
        with open(run / "events.jsonl", "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - TAIL_BYTES, 0))
            data = f.read()
    except OSError:
        return []
    out: list[float] = []
    for line in data.splitlines()[1:] if len(data) == TAIL_BYTES else data.splitlines():
        if b'"metrics"' not in line:  # most lines of a long run are; the rest need no parsing
            continue
        try:
            e = ev.parse(line)
        except ValueError:  # a line cut by the tail's start, or not an event: no point to draw
            continue
        if isinstance(e, ev.Metrics) and math.isfinite(e.train_loss):
            out.append(e.train_loss)
    return out[-n:]


def sparkline(values: list[float]) -> Text:
    if not values:
        return Text("")
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return Text("".join(BLOCKS[int((v - lo) / span * (len(BLOCKS) - 1))] for v in values), style="cyan")


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "Open", priority=True, tooltip="Attach to the highlighted run's dashboard"),
        Binding("n", "new", "New run", tooltip="Start the wizard for a new run"),
        Binding("r", "refresh", "Refresh", tooltip="Read the runs folder again"),
        Binding("space", "mark", "Mark", show=False, tooltip="Mark the highlighted run for comparing"),
        Binding("c", "compare", "Compare", show=False,
                tooltip="Compare the marked runs (or the highlighted one and the one below it)"),
    ]
    marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="runs-title", classes="step-bar")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "state", "technique", "step", "loss", "recent loss")
        self.action_refresh()
        table.focus()

    def action_refresh(self) -> None:
        from engine.runfolder.folder import list_runs

        root = self.app.runs_path()  # type: ignore[attr-defined]
        runs = list(reversed(list_runs(root)))  # newest first
        self.query_one("#runs-title", Static).update(Text.assemble(("Runs ", "bold"), f"in {root}"))
        table = self.query_one(DataTable)
        table.clear()
        for r in runs:
            loss: Any = "-" if r.loss is None else f"{r.loss:.4f}"
            table.add_row(r.id, Text(r.state, style=STATE_STYLE.get(r.state, "")), r.technique, f"{r.step:,}", loss,
                          sparkline(recent_losses(Path(r.path), n=14)), key=r.path)
        from tui.screens.sweep import sweep_rows

        for row, key in sweep_rows(root):  # sweeps: a row each, Enter opens the sweep's view
            table.add_row(*row, key=key)

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return
        path = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        from tui.screens.sweep import SWEEP_KEY, SweepScreen

        if str(path).startswith(SWEEP_KEY):
            self.app.push_screen(SweepScreen(str(path)[len(SWEEP_KEY):]))
            return
        from tui.screens.dashboard import DashboardScreen

        self.app.push_screen(DashboardScreen(str(path)))

    def _cursor_path(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_mark(self) -> None:
        path = self._cursor_path()
        if path is None:
            return
        self.marked = [p for p in self.marked if p != path] if path in self.marked else [*self.marked, path]
        self.notify(f"{len(self.marked)} run(s) marked for comparing (c compares)")

    def action_compare(self) -> None:
        from textual.coordinate import Coordinate

        from tui.screens.compare import CompareScreen

        table = self.query_one(DataTable)
        runs = list(self.marked)
        if len(runs) < 2 and table.row_count >= 2:  # nothing marked: the highlighted run and the next one
            row = min(table.cursor_coordinate.row, table.row_count - 2)
            runs = [str(table.coordinate_to_cell_key(Coordinate(row + i, 0)).row_key.value) for i in (0, 1)]
        if len(runs) >= 2:
            self.app.push_screen(CompareScreen(runs))

    def action_new(self) -> None:
        self.app.pop_screen()
