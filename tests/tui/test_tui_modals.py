"""The guard questions show their keys: `[c]` in a label is Textual markup unless escaped."""

from __future__ import annotations

import asyncio

from textual.app import App
from textual.widgets import Button

from engine.runfolder import events as ev

from tui.modals.confirm import ConfirmModal, QuitModal


def _labels(modal) -> list[str]:
    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(modal)

    async def run() -> list[str]:
        app = Host()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            return [str(b.label) for b in app.screen.query(Button)]

    return asyncio.run(run())


def test_quit_and_confirm_buttons_name_their_keys() -> None:
    assert _labels(QuitModal()) == ["Close UI [c]", "Stop training [s]", "Stay [esc]"]
    assert _labels(ConfirmModal("Stop the run?")) == ["Yes [y]", "No [n]"]


def test_attach_lines_show_severity_and_no_empty_suggestion() -> None:
    from tui.commands.attach import describe

    note = describe(ev.Alert(step=0, kind="batch_size", severity="info", suggest="",
                             message="micro-batch 4 x accumulation 2 [chosen]"))
    assert note.startswith("[cyan]") and "note (batch_size)" in note and "->" not in note
    assert "\\[chosen]" in note  # a bracket in a message is text, not markup
    warn = describe(ev.Alert(step=7, kind="spike", message="loss jumped", suggest="rollback"))
    assert warn.startswith("[bold yellow]") and warn.endswith("loss jumped -> rollback[/]")
