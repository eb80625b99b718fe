"""Lower the learning rate: x0.5, x0.1, or a value. Returns the set_lr arguments or None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from engine.vocabulary import LR_RANGE, lr_problem


def parse_lr(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if lr_problem(value) else value


def factor_problem(current: float | None, factor: float) -> str | None:
    """Why x`factor` from the current LR leaves the allowed range (the job checks again), or None."""
    return lr_problem(current * factor) if current else None


class LrModal(ModalScreen[dict[str, float] | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: float | None) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        now = f"{self.current:.3g}" if self.current else "?"
        with Vertical(classes="modal"):
            yield Label(f"Learning rate (now {now})", classes="modal-title")
            yield OptionList(Option("x 0.5   halve it", id="0.5"), Option("x 0.1   the book's rescue factor", id="0.1"),
                             Option("a value…", id="value"), id="lr-choice")
            yield Input(placeholder="e.g. 1e-4, then enter", id="lr-value")
            yield Label("", id="lr-error")

    def on_mount(self) -> None:
        self.query_one("#lr-value", Input).display = False
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id == "value":
            field = self.query_one("#lr-value", Input)
            field.display = True
            field.focus()
        else:
            factor = float(event.option.id or 1)
            if why := factor_problem(self.current, factor):
                self.query_one("#lr-error", Label).update(why)
                return
            self.dismiss({"factor": factor})

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = parse_lr(event.value.strip())
        if value is None:
            low, high = LR_RANGE
            self.query_one("#lr-error", Label).update(f"a number from {low:g} to {high:g}, such as 3e-5")
            return
        self.dismiss({"value": value})
