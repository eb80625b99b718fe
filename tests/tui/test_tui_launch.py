"""The whole path with a real job: the wizard driven by keys from the hardware screen to a launched
tiny run, the dashboard showing its falling loss, and pause / lower LR / save / roll back / stop
from the dashboard acknowledged in the run's own events. Then a fresh app attaches and shows the
history."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from tui_helpers import fixed_report, screen_text, wait_until

from engine.processes import pid_alive
from engine.runfolder.folder import read_events, read_status
from tui.app import make_app
from tui.screens.dashboard import DashboardScreen

pytestmark = pytest.mark.slow


def acks(run: Path) -> dict[str, dict]:
    events, _ = read_events(run)
    return {e["cmd"]: e for e in events if e.get("type") == "control_ack"}


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    text = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(2000))
    (tmp_path / "corpus.txt").write_text(text)
    return tmp_path / "corpus.txt"


async def test_wizard_launches_and_steers_a_real_run(corpus, tmp_path) -> None:
    app = make_app(hardware=fixed_report("none"), show_runs=False, runs_dir=str(tmp_path / "runs"))
    app.choices.dataset = "corpus.txt"
    app.choices.log_every = 2  # metrics every 2 steps: the dashboard has a curve sooner on a busy machine
    run: Path | None = None
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("enter", "enter", "enter")  # hardware, technique (scratch), model (tiny)
            await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
            await pilot.press("enter")  # data
            await wait_until(pilot, lambda: "estimate" in app.choices.extra)
            await pilot.press("enter")  # checks
            steps_row = [s.key for s in app.screen.settings()].index("max_steps")
            await pilot.press(*["down"] * steps_row, "right", "right", "right")  # 500 -> 5000 steps: still running
            assert app.choices.max_steps == 5000
            await pilot.press("enter")  # options
            await pilot.press("enter")  # review: launch
            await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=30)
            dash = app.screen
            run = dash.run
            assert run.parent == tmp_path / "runs"
            await wait_until(pilot, lambda: len(dash.history.train) >= 3, timeout=120)
            losses = [loss for _, loss in dash.history.train]
            assert losses[-1] < losses[0]  # falling loss, read from the job's events
            assert "RUNNING" in screen_text(app)

            await pilot.press("p")
            await wait_until(pilot, lambda: "pause" in acks(run), timeout=60)
            await wait_until(pilot, lambda: dash.history.state == "paused", timeout=30)
            await pilot.press("l", "enter")  # x 0.5
            await wait_until(pilot, lambda: "set_lr" in acks(run), timeout=60)
            assert acks(run)["set_lr"]["ok"] and acks(run)["set_lr"]["multiplier"] == 0.5
            await pilot.press("s")
            await wait_until(pilot, lambda: "save" in acks(run) and dash.checkpoints(), timeout=60)
            await pilot.press("b", "enter")  # roll back to the newest checkpoint
            await wait_until(pilot, lambda: "rollback" in acks(run), timeout=60)
            assert acks(run)["rollback"]["ok"], acks(run)["rollback"]
            await pilot.press("p")  # resume
            await wait_until(pilot, lambda: "resume" in acks(run), timeout=60)
            await pilot.press("d")  # detach: the app exits, the run goes on
            await pilot.pause()
        assert app.return_value == 0
        status = read_status(run)
        assert status["state"] in ("running", "paused") and pid_alive(status["pid"])

        # a fresh app attaches and shows the run's history with its controls
        again = make_app(attach=str(run), hardware=fixed_report("none"))
        async with again.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: len(again.screen.history.train) >= 3, timeout=30)
            assert [m.char for m in again.screen.history.marks].count("↺") >= 1  # the rollback is marked
            await pilot.press("g", "enter")  # a sample from the newest checkpoint, generated in a subprocess
            await wait_until(pilot, lambda: "sample: from step-" in screen_text(again), timeout=90)
            await pilot.press("S", "y")  # stop, after the question
            await wait_until(pilot, lambda: again.screen.history.state in ("stopped", "done"), timeout=90)
        assert json.loads((run / "status.json").read_text())["state"] in ("stopped", "done")
    finally:
        if run is not None:
            pid = read_status(run).get("pid")
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
