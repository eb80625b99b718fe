"""What every wizard step shares: the step bar at the top, Next/Back keys, and the footer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

if TYPE_CHECKING:
    from engine.machine.probe import HardwareReport
    from tui.wizard import Choices

STEPS = ("Hardware", "Technique", "Model", "Data", "Checks", "Options", "Review")


def step_bar(current: int) -> Text:
    """`Hardware › Technique › ...` with the current step highlighted and the done ones dimmed."""
    text = Text()
    for i, name in enumerate(STEPS):
        if i:
            text.append(" › ", style="#808080")
        style = "bold reverse" if i == current else ("#9e9e9e" if i < current else "")
        text.append(f"{i + 1} {name}", style=style)
    return text


class WizardHost(Protocol):
    """What the steps use of the app that shows them (tui.app.WizardApp is it): screens sit below the app
    and name this shape instead of importing it."""
    choices: Choices
    hardware: HardwareReport | None
    runs_dir: str | None

    def next_step(self, current: Screen) -> None: ...

    def probe_hardware(self) -> Any: ...

    def runs_path(self) -> Path: ...

    def existing_runs(self) -> list[Any]: ...


class WizardStep(Screen):
    """A step of the wizard. Subclasses set STEP (0-based), compose `body()`, and say when Next applies."""

    STEP: ClassVar[int] = 0
    BINDINGS = [
        # priority: Enter always means Next, also when a list or an input has the focus (their
        # choice is read from the widget); space selects and toggles within a step.
        Binding("enter", "next", "Next", priority=True, tooltip="Go to the next step"),
        Binding("escape", "back", "Back", tooltip="Go back one step"),
    ]

    @property
    def wizard(self) -> WizardHost:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(step_bar(self.STEP), classes="step-bar")
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def ready(self) -> bool:
        """Whether Next may be taken now (the step has what it needs)."""
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return True if self.ready() else None  # None: shown dimmed
        if action == "back":
            return self.STEP > 0
        return True

    def action_next(self) -> None:
        if self.ready():
            self.wizard.next_step(self)

    def action_back(self) -> None:
        if self.STEP > 0:
            self.app.pop_screen()

    def changed(self) -> None:
        """Call when the step's choices change: re-evaluates which keys apply."""
        self.refresh_bindings()
