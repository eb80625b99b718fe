"""Step 1: what this machine has. The doctor report: GPUs with memory, utilisation, temperature and
power; the torch build; problems with their fixes. Shown at once with "probing…"; the App's
worker fills it in (NVML, package metadata: about 0.1 s, no torch import on a CPU build)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.output import human_bytes
from tui.screens.base import WizardStep
from tui.widgets.gpu import GpuCard

if TYPE_CHECKING:
    from engine.machine.probe import HardwareReport

SEVERITY = {"error": ("✗", "bold red"), "warning": ("!", "yellow"), "info": ("i", "cyan")}


def torch_line(report: HardwareReport) -> Text:
    t = report.torch
    text = Text("PyTorch ", style="bold")
    if not t.installed:
        return text.append("not installed", style="red")
    text.append(t.version or "?")
    if t.cuda is None:
        text.append("  CPU build", style="yellow" if report.gpus else "")
    else:
        text.append(f"  CUDA {t.cuda} build")
        if t.cuda_available:
            text.append(f", {t.device_count} device(s) visible", style="green")
    if t.mps_available:
        text.append("  Apple MPS available", style="green")
    return text


def machine_line(report: HardwareReport) -> Text:
    text = Text()
    if report.gpus:
        text.append(f"{len(report.gpus)} NVIDIA GPU(s)", style="bold")
        text.append(f"  driver {report.driver_version or '-'}  CUDA {report.cuda_driver_version or '-'}")
    elif report.nvml_status in ("ok", "no-driver"):
        text.append("No NVIDIA GPU: training runs on the CPU", style="bold")
        text.append(" (fine for tiny models and the demo)")
    else:
        text.append(f"NVML: {report.nvml_status}", style="yellow")
    return text


def problems_text(report: HardwareReport) -> Text | Table:
    """Each problem with its fix underneath, wrapped under the message rather than under the mark."""
    if not report.problems:
        return Text("✓ No problems found", style="green")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for p in report.problems:
        mark, style = SEVERITY.get(p.severity, ("·", ""))
        grid.add_row(Text(mark, style=style), Text.assemble(p.message, "\n", ("fix: " + p.fix, "#9e9e9e")))
    return grid


class HardwareScreen(WizardStep):
    STEP = 0
    BINDINGS = [
        Binding("r", "reprobe", "Re-probe", tooltip="Read the GPUs and the software again"),
        Binding("a", "runs", "Runs", tooltip="The runs on this machine: attach to one"),
    ]

    def body(self) -> ComposeResult:
        with VerticalScroll(id="hardware"):
            yield Static(Text("Probing GPUs and software…", style="italic"), id="machine")
            yield VerticalScroll(id="gpus")
            yield Static("", id="torch")
            yield Static("", id="problems")
            yield Static("", id="runs")

    has_runs = False

    def on_mount(self) -> None:
        self.watch(self.app, "hardware", self.show_report, init=True)

    def on_screen_resume(self) -> None:
        self.has_runs = bool(self.wizard.runs_path().is_dir() and self.wizard.existing_runs())  # read once a visit
        self.refresh_bindings()

    def ready(self) -> bool:
        return self.wizard.hardware is not None

    def show_report(self, report: HardwareReport | None) -> None:
        if report is None:
            return
        self.query_one("#machine", Static).update(machine_line(report))
        gpus = self.query_one("#gpus", VerticalScroll)
        gpus.remove_children()
        gpus.mount_all(GpuCard(g) for g in report.gpus)
        gpus.display = bool(report.gpus)
        self.query_one("#torch", Static).update(torch_line(report))
        self.query_one("#problems", Static).update(problems_text(report))
        self.query_one("#runs", Static).update(
            Text.assemble(("Runs ", "bold"), report.runs_dir, f"  ({human_bytes(report.disk_free_bytes)} free)"))
        self.changed()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "runs":
            return True if self.has_runs else None
        return super().check_action(action, parameters)

    def action_runs(self) -> None:
        from tui.screens.runs import RunsScreen

        self.app.push_screen(RunsScreen())

    def action_reprobe(self) -> None:
        self.query_one("#machine", Static).update(Text("Probing GPUs and software…", style="italic"))
        self.wizard.probe_hardware()
