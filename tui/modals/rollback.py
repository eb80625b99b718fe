"""Roll back to which checkpoint? Returns its step, or None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


class RollbackModal(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, checkpoints: list[tuple[str, int, float | None]], title: str = "Roll back to") -> None:
        """`checkpoints`: (name, step, loss or None), newest first."""
        super().__init__()
        self.checkpoints = checkpoints
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal"):
            yield Label(self.title_text, classes="modal-title")
            yield OptionList(*(Option(f"{name:<18} step {step:>7}" + (f"  loss {loss:.3f}" if loss is not None else ""),
                                      id=str(step)) for name, step, loss in self.checkpoints), id="checkpoints")
            yield Label("enter: reload model, optimizer, data; esc: cancel", classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))
