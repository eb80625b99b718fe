"""Step 7: the run spec that will run (TOML), the equivalent `llm-wizard train` command, save, and
launch. Launching first makes the data's and the technique's checks (tui.wizard.preflight, as `llm-wizard train`:
a bad option, a missing model, QLoRA without 4-bit support, a teacher whose tokenizer differs), so a
bad choice is refused here with its message and no run folder; then the run engine's own API
(engine.run.job.create + launch: a detached process in its own session) and the dashboard on the new run.

Several machines: the run folder is picked here (tui.machines.planned_run) so that each machine's exact
command (engine.run.distributed.launch.launch_plan) is shown before launch, one per line, never wrapped (the
block scrolls sideways; c copies it); the launch creates the folder at that path."""

from __future__ import annotations

from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from tui.screens.base import WizardStep
from tui.widgets.commands import CommandBlock
from tui.wizard import preflight, spec_dict, train_command


class Launched(Message):
    def __init__(self, run: Path | None, error: str | None = None) -> None:
        super().__init__()
        self.run, self.error = run, error


def free_path(folder: Path, name: str) -> Path:
    """`name.toml` in `folder`, or `name-2.toml`... so that saving never overwrites a spec."""
    path, n = folder / f"{name}.toml", 2
    while path.exists():
        path, n = folder / f"{name}-{n}.toml", n + 1
    return path


class ReviewScreen(WizardStep):
    STEP = 6
    BINDINGS = [
        Binding("enter", "next", "Launch", priority=True, tooltip="Start the run (detached) and open its dashboard"),
        Binding("s", "save", "Save spec", tooltip="Write the spec to a TOML file in the current folder"),
        Binding("c", "copy", "Copy commands", tooltip="Copy every machine's command to the clipboard"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.toml: str | None = None
        self.error: str | None = None
        self.saved: Path | None = None
        self.launching = False
        self.refused: str | None = None  # why the last launch was refused (shown under the command)
        self.planned: Path | None = None  # several machines: the run folder the launch creates
        self.commands: list[str] = []  # several machines: `# machine N:` and its command, as launch_plan says

    def body(self) -> ComposeResult:
        yield Static("", id="review-command")
        yield CommandBlock(id="review-nodes")
        with VerticalScroll(id="review"):
            yield Static("", id="review-toml")

    def on_mount(self) -> None:
        self.render_spec()
        self.query_one("#review", VerticalScroll).focus()  # ↑/↓ scroll the spec

    def render_spec(self) -> None:
        from engine.errors import UserError
        from engine.spec import from_dict, to_toml

        spec = None
        try:
            spec = from_dict(spec_dict(self.wizard.choices))
            self.toml, self.error = to_toml(spec), None
        except UserError as err:
            self.toml, self.error = None, str(err)
        self.show_nodes(spec)
        toml_view = self.query_one("#review-toml", Static)
        if self.toml is None:
            toml_view.update(Text(f"The spec is not valid yet: {self.error}", style="red"))
        else:
            toml_view.update(Syntax(self.toml, "toml", theme="ansi_dark", background_color="default"))
        self.show_command()
        self.changed()

    def show_nodes(self, spec: object) -> None:
        """Several machines: what each runs, for the run folder the launch will create."""
        from engine.paths import runs_dir
        from tui.machines import node_plan, planned_run

        nodes = self.query_one("#review-nodes", CommandBlock)
        several = spec is not None and spec.distributed.num_machines > 1  # type: ignore[attr-defined]
        nodes.display = several
        if not several:
            self.planned, self.commands = None, []
            return
        root = runs_dir(self.wizard.runs_dir or spec.runs_dir or None)  # type: ignore[attr-defined]
        if self.planned is None or self.planned.parent != root.expanduser().absolute():
            self.planned = planned_run(root, spec.name)  # type: ignore[attr-defined]
        plan = node_plan(self.planned, spec)
        self.commands = plan.commands
        about = Text("\n".join(plan.about), style="#b2b2b2")
        about.append("\nEnter starts machine 0's here; run each other's on that machine (c copies them):",
                     style="bold")
        nodes.show(about, plan.commands)

    def show_command(self) -> None:
        target = self.saved or free_path(Path.cwd(), self.wizard.choices.run_name())
        shown = f"./{target.name}" if target.parent == Path.cwd() else str(target)
        text = Text.assemble(("Same run from a shell: ", "bold"), (train_command(shown), "cyan"))
        if self.saved is None:
            text.append("  (s saves the spec there)", style="#9e9e9e")
        if self.refused:
            text.append(f"\nNot launched: {self.refused}", style="bold red")
        self.query_one("#review-command", Static).update(text)

    def ready(self) -> bool:
        return self.toml is not None and not self.launching

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "save":
            return True if self.toml is not None else None
        if action == "copy":
            return bool(self.commands)
        return super().check_action(action, parameters)

    def action_copy(self) -> None:
        if self.commands:
            self.app.copy_to_clipboard("\n".join(self.commands) + "\n")
            self.notify(f"copied the commands of {sum(not c.startswith('#') for c in self.commands)} machines")

    def action_save(self) -> None:
        if self.toml is None:
            return
        path = self.saved or free_path(Path.cwd(), self.wizard.choices.run_name())
        try:
            path.write_text(self.toml, encoding="utf-8")
        except OSError as err:
            self.notify(f"cannot write {path}: {err}", severity="error")
            return
        self.saved = path
        self.notify(f"saved {path}")
        self.show_command()

    def action_next(self) -> None:
        if not self.ready():
            return
        self.launching = True
        self.changed()
        self.query_one("#review-command", Static).update(Text("checking the data and starting the run…",
                                                              style="italic"))
        self.launch()

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def launch(self) -> None:
        from engine.errors import UserError
        from engine.paths import runs_dir
        from engine.run import job
        from engine.spec import from_dict

        try:
            spec = from_dict(spec_dict(self.wizard.choices))
            preflight(spec)  # the data's and the technique's checks, before a run folder exists
            if self.planned is not None:  # several machines: the folder whose commands are shown
                run = job.create(spec, self.planned.parent, run_id=self.planned.name)
            else:
                run = job.create(spec, runs_dir(self.wizard.runs_dir or spec.runs_dir or None))
            job.launch(run)
        except (UserError, OSError) as err:
            self.post_message(Launched(None, str(err)))
            return
        self.post_message(Launched(run))

    def on_launched(self, message: Launched) -> None:
        self.launching = False
        self.refused = message.error if message.run is None else None
        if message.run is None:
            self.notify(message.error or "launch failed", severity="error", timeout=10)
            self.show_command()
            self.changed()
            return
        from tui.screens.dashboard import DashboardScreen

        self.app.push_screen(DashboardScreen(message.run))
