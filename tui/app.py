"""The Textual app: the wizard's steps, the runs list and the live dashboard.

`make_app()` is the one way to build it, shared by `llm-wizard`, `llm-wizard attach`, `demo`
and the tests (as posting's `make_posting`). Nothing heavy is imported here: the first screen must
be up in well under a second, so torch/transformers/datasets are only imported by workers, later.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen

from tui.wizard import Choices

if TYPE_CHECKING:
    from engine.machine.probe import HardwareReport

# The wizard's steps in order, imported when first shown (module, class).
STEP_SCREENS: tuple[tuple[str, str], ...] = (
    ("tui.screens.hardware", "HardwareScreen"),
    ("tui.screens.technique", "TechniqueScreen"),
    ("tui.screens.model", "ModelScreen"),
    ("tui.screens.dataset", "DatasetScreen"),
    ("tui.screens.checks", "ChecksScreen"),
    ("tui.screens.options", "OptionsScreen"),
    ("tui.screens.review", "ReviewScreen"),
)


# A hosted technique (engine/vocabulary.py) trains on a service's machines: its model step names the service's
# model, and the memory checks and local training options do not apply.
HOSTED_SCREENS = {2: ("tui.screens.hosted", "HostedScreen"), 4: None, 5: None}


def step_screen(index: int, *, hosted: bool = False) -> Screen:
    module, name = (HOSTED_SCREENS.get(index) or STEP_SCREENS[index]) if hosted else STEP_SCREENS[index]
    return getattr(importlib.import_module(module), name)()


class HardwareProbed(Message):
    """The probe worker's answer (posted from its thread)."""

    def __init__(self, report: HardwareReport) -> None:
        super().__init__()
        self.report = report


class WizardApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "llm-wizard"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True, tooltip="Leave llm-wizard (asks first if a run is followed)"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, tooltip="As ctrl+q: asks before leaving a run"),
    ]

    #: The hardware report once probed; screens watch it.
    hardware: var[HardwareReport | None] = var(None, always_update=True)

    def __init__(self, *, runs_dir: str | None = None, nvml: Any = None, hardware: HardwareReport | None = None,
                 attach: str | None = None, show_runs: bool = True, sweep: str | None = None) -> None:
        super().__init__()
        self.sweep_to = sweep
        self.runs_dir = runs_dir
        self.nvml = nvml
        self._given_hardware = hardware
        self.attach_to = attach
        self.show_runs = show_runs
        self.choices = Choices()
        self.crashed_run: Path | None = None  # the run followed when the UI crashed (RELIABILITY P11)

    def on_mount(self) -> None:
        if self.sweep_to:
            from tui.screens.sweep import SweepScreen

            self.push_screen(SweepScreen(self.sweep_to))
        elif self.attach_to:
            from tui.screens.dashboard import DashboardScreen

            self.push_screen(DashboardScreen(self.attach_to))
        else:
            self.push_screen(step_screen(0))
            if self.show_runs and self.existing_runs():
                from tui.screens.runs import RunsScreen

                self.push_screen(RunsScreen())
        if self._given_hardware is not None:
            self.hardware = self._given_hardware
        else:
            self.probe_hardware()

    # --- hardware ------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="probe")
    def probe_hardware(self) -> None:
        from engine.machine.probe import probe

        self.post_message(HardwareProbed(probe(nvml=self.nvml, runs=self.runs_dir)))

    def on_hardware_probed(self, message: HardwareProbed) -> None:
        self.hardware = message.report

    # --- runs ----------------------------------------------------------------------------------

    def runs_path(self) -> Path:
        from engine.paths import runs_dir

        return runs_dir(self.runs_dir)

    def existing_runs(self) -> list[Any]:
        from engine.runfolder.folder import list_runs

        from engine.sweep.state import list_sweeps

        return [*list_runs(self.runs_path()), *list_sweeps(self.runs_path())]

    # --- leaving ---------------------------------------------------------------------------------

    def followed_run(self) -> Path | None:
        """The run whose dashboard is open (and still live), if any."""
        from tui.screens.dashboard import DashboardScreen
        from tui.screens.dashboard_view import LIVE

        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen) and screen.history.state in LIVE:
                return screen.run
        return None

    async def action_quit(self) -> None:
        run = self.followed_run() if "tui.screens.dashboard" in sys.modules else None
        if run is None:
            self.exit(0)
            return
        from tui.modals.confirm import QuitModal

        def answered(choice: str | None) -> None:
            if choice == "detach":
                self.detach(run)
            elif choice == "stop":
                from engine.runfolder.folder import send_command

                send_command(run, "stop")
                self.exit(0, message=f"Asked run {run.name} to save and stop.")

        if not isinstance(self.screen, QuitModal):
            self.push_screen(QuitModal(), answered)

    def _handle_exception(self, error: Exception) -> None:
        """Textual's hook for an unhandled exception (it ends the app). RELIABILITY P11: the run is
        another process and goes on; note which, so that `run()` can say so under the traceback."""
        try:
            self.crashed_run = self.crashed_run or self.followed_run()  # the first error's run
        except Exception:  # the note is a nicety: never hide the original error behind a second one
            self.crashed_run = None
        super()._handle_exception(error)

    def crash_note(self) -> str | None:
        run = self.crashed_run
        if self.return_code != 1 or run is None:
            return None
        return (f"The UI stopped on the error above; run {run.name} goes on (the error did not reach it). "
                f"Back to it: llm-wizard attach {run.name}")

    def run(self, *args: Any, **kwargs: Any) -> int | None:
        result = super().run(*args, **kwargs)
        if note := self.crash_note():
            print(note, file=sys.stderr)
        return self.return_code if result is None and self.return_code else result  # a crash exits 1, not 0

    def detach(self, run: Path) -> None:
        """Leave the run's dashboard; the run goes on. Back to the runs list if it was opened from
        there, else out of the app with the command that comes back."""
        from tui.screens.runs import RunsScreen

        stack = self.screen_stack
        if len(stack) >= 2 and isinstance(stack[-2], RunsScreen):
            self.pop_screen()
            stack[-2].action_refresh()
            return
        self.exit(0, message=f"The run goes on. Back to it: llm-wizard attach {run.name}")

    # --- navigation ----------------------------------------------------------------------------

    def next_step(self, current: Screen) -> None:
        from tui.corpus import hosted

        index, remote = getattr(current, "STEP", 0) + 1, hosted(self.choices.technique)
        while remote and index in HOSTED_SCREENS and HOSTED_SCREENS[index] is None:
            index += 1
        if index < len(STEP_SCREENS):
            self.push_screen(step_screen(index, hosted=remote))


def make_app(*, runs_dir: str | None = None, nvml: Any = None, hardware: HardwareReport | None = None,
             attach: str | None = None, show_runs: bool = True, sweep: str | None = None) -> WizardApp:
    """The app as `llm-wizard` runs it. `nvml` replaces pynvml (tests pass engine.machine.fake_nvml fixtures);
    `hardware` skips the probe (snapshot tests pass a fixed report); `attach` opens a run's dashboard, `sweep` a
    sweep's view."""
    return WizardApp(runs_dir=runs_dir, nvml=nvml, hardware=hardware, attach=attach, show_runs=show_runs,
                     sweep=sweep)
