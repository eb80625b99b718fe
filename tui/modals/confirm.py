"""Questions that guard a run: "close the UI or stop training?" and "really stop?"."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class QuitModal(ModalScreen[str | None]):
    """Leaving while a run is followed: "detach" (the run goes on), "stop" (the run saves and exits)
    or None (stay). Quitting never stops a run without this answer."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Stay"),
        Binding("c", "dismiss('detach')", "Close UI"),
        Binding("s", "dismiss('stop')", "Stop training"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal"):
            yield Label("Close the UI or stop training?", classes="modal-title")
            yield Label("Closing the UI leaves the run going;\n`llm-wizard attach` brings this screen back.")
            with Horizontal(classes="modal-buttons"):
                yield Button(r"Close UI \[c]", id="detach", variant="primary")
                yield Button(r"Stop training \[s]", id="stop", variant="error")
                yield Button(r"Stay \[esc]", id="stay")

    def on_mount(self) -> None:
        self.query_one("#detach", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "stay" else event.button.id)


class ConfirmModal(ModalScreen[bool]):
    """A yes/no question; y/enter is yes, n/escape is no."""

    BINDINGS = [
        Binding("y", "dismiss(True)", "Yes"),
        Binding("n,escape", "dismiss(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal"):
            yield Label(self.question, classes="modal-title")
            if self.detail:
                yield Label(self.detail)
            with Horizontal(classes="modal-buttons"):
                yield Button(r"Yes \[y]", id="yes", variant="error")
                yield Button(r"No \[n]", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
