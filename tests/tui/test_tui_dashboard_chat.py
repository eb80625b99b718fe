"""The dashboard's chat key: a paused run saves its current weights, then `llm-wizard chat` opens on that
checkpoint in the terminal the app steps aside from; a finished run chats with its final model."""

from __future__ import annotations

import subprocess

from tui_helpers import ack, commands, fake_run, fixed_report, wait_until

from engine.machine.fake_nvml import fixture
from tui.app import make_app
from tui.screens.dashboard import DashboardScreen


async def test_chat_on_a_paused_run_saves_first_then_opens_on_that_checkpoint(tmp_path, monkeypatch) -> None:
    run = fake_run(tmp_path, steps=300, state="paused")
    opened: list[str | None] = []
    monkeypatch.setattr(DashboardScreen, "open_chat", lambda self, checkpoint: opened.append(checkpoint))
    app = make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), attach=str(run))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.history.state == "paused")
        await pilot.press("t")
        await wait_until(pilot, lambda: commands(run))
        (save,) = commands(run)
        assert save["cmd"] == "save" and opened == []  # not before the weights are on disk
        ack(run, save, step=300)
        await wait_until(pilot, lambda: opened == ["300"])


async def test_chat_is_not_offered_while_a_run_trains_and_says_how_without_a_terminal(tmp_path, monkeypatch) -> None:
    run = fake_run(tmp_path, steps=300, state="running")
    ran: list[list[str]] = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd) if "chat" in cmd else real(cmd, **kw))
    app = make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), attach=str(run))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.history.step == 300)
        assert app.screen.check_action("chat", ()) is None  # running: the weights change under it
        await pilot.press("t")
        await pilot.pause()
        assert commands(run) == []
        app.screen.open_chat("300")  # the headless test driver cannot step aside: the command is shown instead
        await pilot.pause()
        notes = [n.message for n in app._notifications]
        assert ran == [] and any("chat needs a terminal" in m and "--checkpoint 300" in m for m in notes), notes
