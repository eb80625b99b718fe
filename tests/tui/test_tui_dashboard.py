"""The dashboard against hand-written run folders: what it shows, what its keys send, and that
leaving never stops a run unasked."""

from __future__ import annotations

import json

import pytest
from event_helpers import metrics
from tui_helpers import ack, checkpoint, commands, fake_run, fixed_report, screen_text, wait_until, write_events

from engine.machine.fake_nvml import fixture
from engine.runfolder import events as ev
from tui.app import make_app
from tui.modals.confirm import ConfirmModal, QuitModal
from tui.modals.lr import LrModal
from tui.modals.rollback import RollbackModal
from tui.screens.dashboard import DashboardScreen
from tui.screens.run_history import RunHistory


def dashboard_app(run, **kw):
    return make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), attach=str(run), **kw)


def dash(app) -> DashboardScreen:
    screen = app.screen
    assert isinstance(screen, DashboardScreen)
    return screen


async def test_shows_history_and_live_events(tmp_path) -> None:
    run = fake_run(tmp_path, steps=300)
    app = dashboard_app(run)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.step == 300 and dash(app).gpus)
        h = dash(app).history
        assert len(h.train) == 30 and h.train[0][1] > h.train[-1][1]  # the loss fell
        assert [s for s, _ in h.val] == [100, 200, 300]
        text = screen_text(app)
        assert "RUNNING" in text and "300 / 1,000" in text and "10,240" in text and "30.0%" in text
        assert "⠀" not in text and any(0x2801 <= ord(ch) <= 0x28FF for ch in text)  # braille loss curve
        assert "GPU1" in text
        # the job logs more: the follower picks it up from its offset
        write_events(run, [metrics(310, loss=2.1, lr=2e-4)])
        await wait_until(pilot, lambda: dash(app).history.step == 310)
        assert dash(app).history.loss == 2.1


async def test_a_line_that_is_not_an_event_is_reported_and_the_rest_still_shown(tmp_path) -> None:
    run = fake_run(tmp_path, steps=300)
    app = dashboard_app(run)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.step == 300)
        with open(run / "events.jsonl", "a") as f:  # a hand edit, or a newer job's event this version cannot read
            f.write('{"v": 1, "t": 1.0, "type": "metrics", "step": "310"}\n')
        write_events(run, [metrics(320, loss=2.05)])
        await wait_until(pilot, lambda: dash(app).history.step == 320)
        (problem,) = dash(app).history.skipped
        assert "line skipped" in problem and "missing" in problem
        await wait_until(pilot, lambda: any("line skipped" in n.message for n in app._notifications))  # a toast
        assert isinstance(app.screen, DashboardScreen) and dash(app).history.loss == 2.05


async def test_controls_are_sent_and_acknowledged(tmp_path) -> None:
    run = fake_run(tmp_path, steps=300)
    app = dashboard_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.step == 300)
        await pilot.press("p")
        await wait_until(pilot, lambda: len(commands(run)) == 1)
        pause = commands(run)[0]
        assert pause["cmd"] == "pause" and pause["id"]
        ack(run, pause, "paused at step 300")
        write_events(run, [ev.State(state="paused", step=300, message="paused at step 300")])
        await wait_until(pilot, lambda: dash(app).history.state == "paused")
        await pilot.pause()
        assert "pause: paused at step 300" in screen_text(app)
        assert "PAUSED" in screen_text(app) and "Resume" in screen_text(app)
        assert not dash(app).pending  # the ack was matched by id

        await pilot.press("l")
        assert isinstance(app.screen, LrModal)
        await pilot.press("enter")  # x 0.5
        await wait_until(pilot, lambda: len(commands(run)) == 2)
        assert commands(run)[1]["cmd"] == "set_lr" and commands(run)[1]["factor"] == 0.5

        await pilot.press("l", "down", "down", "enter")
        await pilot.press(*"2e-5", "enter")
        await wait_until(pilot, lambda: len(commands(run)) == 3)
        assert commands(run)[2] == {**commands(run)[2], "cmd": "set_lr", "value": 2e-5}

        await pilot.press("b")
        assert isinstance(app.screen, RollbackModal)
        await pilot.press("down", "enter")  # the second newest: step 200
        await wait_until(pilot, lambda: len(commands(run)) == 4)
        rollback = commands(run)[3]
        assert rollback["cmd"] == "rollback" and rollback["step"] == 200
        ack(run, rollback, "rolled back", checkpoint="step-000200", step=200)
        await wait_until(pilot, lambda: dash(app).history.step == 200)
        assert max(s for s, _ in dash(app).history.train) == 200  # the abandoned branch left the chart

        await pilot.press("p")  # now resume
        await wait_until(pilot, lambda: len(commands(run)) == 5)
        assert commands(run)[4]["cmd"] == "resume"


async def test_quit_asks_and_detach_leaves_the_run(tmp_path) -> None:
    run = fake_run(tmp_path)
    app = dashboard_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.step > 0)
        await pilot.press("ctrl+c")
        assert isinstance(app.screen, QuitModal)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, QuitModal)
        await pilot.press("c")
        await pilot.pause()
    assert app.return_value == 0
    assert commands(run) == []  # closing the UI sent nothing: the run goes on


async def test_stop_asks_first(tmp_path) -> None:
    run = fake_run(tmp_path)
    app = dashboard_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.step > 0)
        await pilot.press("S")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        assert commands(run) == []
        await pilot.press("S", "y")
        await wait_until(pilot, lambda: len(commands(run)) == 1)
        assert commands(run)[0]["cmd"] == "stop"


async def test_finished_run_dims_controls(tmp_path) -> None:
    run = fake_run(tmp_path, state="done")
    write_events(run, [ev.Done(state="done", step=300)])
    app = dashboard_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.state == "done")
        await pilot.press("p", "s", "l")
        assert isinstance(app.screen, DashboardScreen) and commands(run) == []
        await pilot.press("ctrl+q")  # nothing live: no question
        await pilot.pause()
    assert app.return_value == 0


def test_history_rollback_drops_the_abandoned_branch() -> None:
    h = RunHistory()
    for step in range(10, 110, 10):
        h.apply(metrics(step, loss=5 - step / 100, lr=1e-3))
        if step % 50 == 0:
            h.apply(checkpoint(step))
    h.apply(ev.ControlAck(id="a", cmd="rollback", ok=True, checkpoint="step-000050", step=50, branch=1,
                          message="rolled back to step-000050; now on branch 1"))
    assert h.step == 50 and max(s for s, _ in h.train) == 50
    h.apply(metrics(60, loss=4.0, lr=1e-4))
    assert h.train[-1] == (60.0, 4.0) and [m.char for m in h.marks].count("↺") == 1
    h.apply(metrics(70, loss=float("nan")))
    assert h.train[-1] == (60.0, 4.0)  # a NaN is shown as a number, never plotted


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_snapshot_dashboard_with_alert(snap_compare, tmp_path, size) -> None:
    run = fake_run(tmp_path, steps=400, alert=True)
    app = dashboard_app(run)

    async def loaded(pilot) -> None:
        await wait_until(pilot, lambda: dash(app).history.step == 400 and dash(app).gpus)

    assert snap_compare(app, terminal_size=size, run_before=loaded)


def test_fake_run_fixture_is_valid_jsonl(tmp_path) -> None:
    run = fake_run(tmp_path)
    lines = (run / "events.jsonl").read_text().splitlines()
    assert all(json.loads(line)["v"] == 1 for line in lines)


def test_snapshot_rollback_question(snap_compare, tmp_path) -> None:
    run = fake_run(tmp_path, steps=400)
    app = dashboard_app(run)

    async def ask(pilot) -> None:
        await wait_until(pilot, lambda: dash(app).history.step == 400 and dash(app).gpus)
        await pilot.press("b")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=ask)
