"""The sweep view: trials table, best so far, the trials' eval curves overlaid; the runs list shows sweeps and opens
one; Enter on a trial opens its run's dashboard. A sweep folder written by hand as the driver writes it."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from tui_helpers import fixed_report, screen_text, wait_until

from engine.runfolder import events as ev
from engine.sweep import state as sweep_state
from engine.sweep.state import SweepState, TrialRecord
from tui.app import make_app
from tui.screens.dashboard import DashboardScreen
from tui.screens.runs import RunsScreen
from tui.screens.sweep import SweepScreen
from tui.widgets.overlay import Overlay, Series, render_overlay

T0 = 1_767_000_000.0
TRIALS = [  # number, state, lr, rank, final, pruned at, eval curve at steps 10..50
    (0, "complete", 3.2e-3, 16, 2.71, None, [3.9, 3.3, 3.0, 2.8, 2.71]),
    (1, "pruned", 2.1e-4, 8, None, 20, [4.6, 4.3]),
    (2, "complete", 1.1e-2, 32, 2.55, None, [3.6, 3.0, 2.8, 2.6, 2.55]),
    (3, "running", 6.4e-3, 16, None, None, [3.7, 3.1]),
]


def make_sweep(root: Path, *, live: bool = True) -> Path:
    folder = root / "20260103-100000-tiny-sweep-ab12"
    folder.mkdir(parents=True)
    (folder / "base.toml").write_text('technique = "scratch"\nname = "tiny"\n')
    records = []
    for number, state, lr, rank, final, pruned_at, curve in TRIALS:
        run = folder / f"20260103-10{number:02d}00-tiny-t{number}-cd{number:02d}"
        run.mkdir()
        (run / "spec.toml").write_text('technique = "scratch"\nname = "tiny"\n')
        log = ev.EventLog(run)
        for i, loss in enumerate(curve):
            log.emit(ev.Eval(t=T0 + i, step=10 * (i + 1), eval_loss=loss, eval_ppl=math.exp(loss)))
        log.close()
        (run / "status.json").write_text(json.dumps({"state": "running" if state == "running" else "done",
                                                     "pid": os.getpid(), "step": 10 * len(curve), "updated": time.time()}))
        records.append(TrialRecord(number, state=state, params={"train.lr": lr, "options.lora_rank": rank},
                                    run=run.name, value=final, best=min(curve), pruned_at=pruned_at))
    st = SweepState(name="tiny", trials=6, space=("train.lr=log(0.0001,0.03)", "options.lora_rank=choice(8, 16, 32)"),
                    pruner="median", records=tuple(records), started=T0,
                    pid=os.getpid() if live else None)
    sweep_state.write(folder, sweep_state.owned_by_me(st, os.getpid()) if live else st)
    return folder


async def test_sweep_view_shows_trials_best_and_opens_a_trial(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path / "runs")
    app = make_app(hardware=fixed_report("none"), runs_dir=str(tmp_path / "runs"), sweep=str(folder))
    async with app.run_test(size=(120, 36)) as pilot:
        assert isinstance(app.screen, SweepScreen)
        text = screen_text(app)
        assert "3/6 trials" in text and "best so far: trial 2" in text and "eval/loss 2.5500" in text
        assert "pruned" in text and "running" in text and "lora_rank" in text
        assert all(f"#{n}" in text for n in range(4))  # each trial's curve in the legend
        await pilot.press("down", "down", "enter")
        assert isinstance(app.screen, DashboardScreen) and app.screen.run.name.endswith("t2-cd02")


async def test_runs_list_shows_sweeps_and_opens_one(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path / "runs")
    app = make_app(hardware=fixed_report("none"), runs_dir=str(tmp_path / "runs"))
    async with app.run_test(size=(120, 30)) as pilot:
        assert isinstance(app.screen, RunsScreen)
        assert folder.name in screen_text(app) and "sweep" in screen_text(app)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, SweepScreen))
        assert app.screen.folder == folder


def test_overlay_draws_each_series_in_its_colour() -> None:
    lines = render_overlay(Overlay([Series("a", [(1, 3.0), (2, 2.0)], "cyan"), Series("b", [(1, 4.0), (2, 1.0)], "red")]),
                           40, 8)
    assert len(lines) == 8 and "━ a" in lines[-1].plain and "━ b" in lines[-1].plain
    styles = {str(span.style) for line in lines[:-2] for span in line.spans}
    assert {"cyan", "red"} <= styles
    log = render_overlay(Overlay([Series("l", [(1e-6, 5.0), (1e-3, 3.0), (1.0, 6.0)])], x_label="lr", log_x=True), 40, 6)
    assert "lr 1.0e-06" in log[-2].plain and log[-2].plain.rstrip().endswith("1")


@pytest.mark.parametrize("size", [(120, 36)])
def test_snapshot_sweep_view(snap_compare, tmp_path, monkeypatch, size) -> None:
    monkeypatch.chdir(tmp_path)
    folder = make_sweep(Path("runs"))

    async def settle(pilot) -> None:  # noqa: ANN001
        await pilot.pause()

    app = make_app(hardware=fixed_report("none"), runs_dir="runs", sweep=str(folder))
    assert snap_compare(app, terminal_size=size, run_before=settle)
