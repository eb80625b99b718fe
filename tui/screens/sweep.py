"""A sweep: its trials (state, parameters, best and final metric, where pruned), the best so far, and the trials'
metric curves overlaid. Reads sweep.json and each trial run's events.jsonl (only the bytes added since the last
read), never the Optuna database; Enter opens the highlighted trial's dashboard, as for any run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.runfolder import folder as runfolder
from engine.sweep import state as sweep_state
from tui.widgets.overlay import PALETTE, Overlay, OverlayChart, Series

TRIAL_STYLE = {"running": "green", "waiting": "#9e9e9e", "complete": "blue", "pruned": "yellow", "fail": "red"}
SWEEP_STYLE = {"running": "green", "done": "blue", "stopped": "yellow", "failed": "red", "crashed": "red"}
SWEEP_KEY = "sweep:"  # the runs list's row key of a sweep: this prefix and its folder


def sweep_rows(root: Path) -> list[tuple[tuple[Any, ...], str]]:
    """The runs list's rows for the sweeps in `root`, newest first: (cells, row key)."""
    rows = []
    for folder, st in reversed(sweep_state.list_sweeps(root)):
        best = st.best()
        rows.append(((folder.name, Text(st.state, style=SWEEP_STYLE.get(st.state, "")), "sweep",
                      f"{len(st.counted())}/{st.trials}", "-" if best is None else f"{best.value:.4f}",
                      Text(f"{st.metric}, best of {len(st.counted())}", style="#9e9e9e")), SWEEP_KEY + str(folder)))
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class SweepScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "Open trial", priority=True, tooltip="The highlighted trial's run dashboard"),
        Binding("r", "refresh", "Refresh", tooltip="Read the sweep folder again"),
        Binding("escape", "back", "Back", tooltip="Back to the previous screen"),
    ]
    DEFAULT_CSS = """
    SweepScreen #sweep-trials { height: auto; max-height: 50%; }
    SweepScreen #sweep-best { padding: 0 1; }
    """

    def __init__(self, folder: str, *, poll_s: float = 1.0) -> None:
        super().__init__()
        self.folder, self.poll_s = Path(folder), poll_s
        self.curves: dict[str, tuple[int, list[tuple[float, float]]]] = {}  # run -> (events offset, points)
        self.columns: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static("", id="sweep-title", classes="step-bar")
        yield Static("", id="sweep-best")
        yield DataTable(id="sweep-trials", cursor_type="row", zebra_stripes=True)
        yield OverlayChart(id="sweep-chart")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()
        self.query_one(DataTable).focus()
        if self.poll_s:
            self.set_interval(self.poll_s, self.action_refresh)

    def _points(self, run: Path, kind: str, key: str) -> list[tuple[float, float]]:
        offset, points = self.curves.get(run.name, (0, []))
        evs, offset = runfolder.read_events(run, offset)
        points = points + [(float(e["step"]), float(e[key])) for e in evs
                           if e["type"] == kind and isinstance(e.get(key), (int, float))]
        self.curves[run.name] = (offset, points)
        return points

    def action_refresh(self) -> None:
        st = sweep_state.read(self.folder)
        if st is None:
            self.query_one("#sweep-title", Static).update(f"{self.folder}: not a sweep folder (no sweep.json)")
            return
        keys = tuple(t.split("=", 1)[0] for t in st.space)
        title = Text.assemble(("Sweep ", "bold"), (self.folder.name, "bold"), "  ",
                              (st.state, SWEEP_STYLE.get(st.state, "")),
                              f"  {len(st.counted())}/{st.trials} trials  ·  {st.metric}  ·  pruner {st.pruner}")
        self.query_one("#sweep-title", Static).update(title)
        best = st.best()
        self.query_one("#sweep-best", Static).update(
            Text.assemble(("best so far: ", "bold"), f"trial {best.number}  ", (f"{st.metric} {best.value:.4f}", "cyan"),
                          "  " + ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in best.params.items()))
            if best else Text("best so far: no trial finished yet", style="#9e9e9e"))
        table = self.query_one(DataTable)
        columns = ("#", "state", *[k.split(".")[-1] for k in keys], "best", "final", "pruned at", "run")
        if columns != self.columns:
            table.clear(columns=True)
            table.add_columns(*columns)
            self.columns = columns
        cursor = table.cursor_row
        table.clear()
        kind, key = ("metrics", st.metric) if st.metric.startswith("train/") else ("eval", st.metric)
        series = []
        for rec in st.records:
            state = rec.state + ("" if rec.counted else "*")
            table.add_row(str(rec.number), Text(state, style=TRIAL_STYLE.get(rec.state, "")),
                          *[_fmt(rec.params.get(k)) for k in keys], _fmt(rec.best), _fmt(rec.value),
                          _fmt(rec.pruned_at) if rec.pruned_at is not None else "", rec.run or "-",
                          key=rec.run or f"trial-{rec.number}")
            run = self.folder / rec.run if rec.run else None
            if run is not None and run.is_dir():
                series.append(Series(f"#{rec.number}", self._points(run, kind, key),
                                     PALETTE[rec.number % len(PALETTE)]))
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        self.query_one(OverlayChart).update(Overlay(series, x_label="step"))

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return
        name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        run = self.folder / str(name)
        if (run / runfolder.SPEC).is_file():
            from tui.screens.dashboard import DashboardScreen

            self.app.push_screen(DashboardScreen(str(run)))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.exit(0)
