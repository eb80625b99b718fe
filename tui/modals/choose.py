"""Pick one value of a wizard setting from a list; values this machine cannot use are listed disabled,
with the reason (the multi-GPU strategy: no CUDA for FSDP, no DeepSpeed for ZeRO)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


@dataclass(frozen=True)
class Choice:
    label: str
    unavailable: str | None = None  # why it cannot be picked here (None: it can)


class ChooseModal(ModalScreen[int | None]):
    """Answers the index of the picked choice, or None (escape)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, choices: list[Choice], current: int | None = None) -> None:
        super().__init__()
        self.title_text, self.choices, self.current = title, choices, current

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal"):
            yield Label(self.title_text, classes="modal-title")
            yield OptionList(*(Option(c.label + (f"  (off: {c.unavailable})" if c.unavailable else ""), id=str(i),
                                      disabled=c.unavailable is not None) for i, c in enumerate(self.choices)))
            yield Label("enter picks, esc keeps the value", classes="modal-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.current is not None and self.choices[self.current].unavailable is None:
            options.highlighted = self.current
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))
