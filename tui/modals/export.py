"""Export a finished run from the dashboard (its `e` key, ExportFlow): the format (merged, adapter, gguf), for
GGUF the quantization, and optionally a Hub repo to push to. Choices this run or machine cannot make are listed
disabled, with the reason; the modal answers an ExportChoice, or None (escape / Cancel)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.modals.confirm import ConfirmModal

FORMATS = (("merged", "a plain transformers model (adapter folded in)"),
           ("adapter", "the peft adapter alone"),
           ("gguf", "llama.cpp / Ollama, with a Modelfile"))


@dataclass(frozen=True)
class ExportChoice:
    format: str
    quant: str | None = None  # gguf only
    push: str | None = None  # ORG/NAME, or None: kept local


def _option(key: str, text: str, unavailable: str | None) -> Option:
    off = (f"  (off: {unavailable})" if text else f"off: {unavailable}") if unavailable else ""
    return Option(f"{key:<8} {text}{off}", id=key, disabled=unavailable is not None)


class ExportModal(ModalScreen[ExportChoice | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, run_name: str, *, adapter: bool, quants: dict[str, str | None]) -> None:
        super().__init__()
        self.run_name, self.adapter, self.quants = run_name, adapter, quants

    def compose(self) -> ComposeResult:
        no_adapter = None if self.adapter else "this run trained all weights"
        with Vertical(classes="modal", id="export-modal"):
            yield Label(f"Export {self.run_name}", classes="modal-title")
            yield OptionList(*(_option(k, t, no_adapter if k == "adapter" else None) for k, t in FORMATS),
                             id="export-format")
            yield OptionList(*(_option(q, "", why) for q, why in self.quants.items()), id="export-quant")
            yield Input(placeholder="push to a Hub repo ORG/NAME (optional)", id="export-push")
            yield Label("", id="export-error")
            with Horizontal(classes="modal-buttons"):
                yield Button("Export", variant="primary", id="export-go")
                yield Button("Cancel", id="export-cancel")

    def on_mount(self) -> None:
        quant = self.query_one("#export-quant", OptionList)
        quant.display = False
        self.query_one("#export-error", Label).display = False
        usable = [i for i, why in enumerate(self.quants.values()) if why is None]
        quant.highlighted = usable[0] if usable else None
        self.query_one("#export-format", OptionList).focus()

    def chosen_format(self) -> str:
        formats = self.query_one("#export-format", OptionList)
        return FORMATS[formats.highlighted or 0][0]

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "export-format":  # the GGUF types only where they apply
            self.query_one("#export-quant", OptionList).display = event.option.id == "gguf"

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "export-format" and event.option.id == "gguf":
            self.query_one("#export-quant", OptionList).focus()
        else:
            self.query_one("#export-push", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.confirm()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export-go":
            self.confirm()
        else:
            self.dismiss(None)

    def confirm(self) -> None:
        from engine.errors import UserError
        from engine.serve.push import check_repo_id

        error = self.query_one("#export-error", Label)
        error.display = True
        fmt, quant = self.chosen_format(), None
        if fmt == "adapter" and not self.adapter:
            error.update("this run has no adapter: pick merged")
            return
        if fmt == "gguf":
            quants = self.query_one("#export-quant", OptionList)
            if quants.highlighted is None:
                error.update("no GGUF type can be written on this machine")
                return
            quant = list(self.quants)[quants.highlighted]
            if self.quants[quant] is not None:
                error.update(f"{quant} {self.quants[quant]}")
                return
        push = self.query_one("#export-push", Input).value.strip() or None
        if push:
            try:
                check_repo_id(push)  # before minutes of exporting
            except UserError as err:
                error.update(str(err))
                return
        self.dismiss(ExportChoice(fmt, quant, push))


def export_run(run: Path, choice: ExportChoice, *, force: bool, progress: Callable[[str], None]) -> Any:
    """engine.serve.export's export, as `llm-wizard export` calls it, then the push when asked; the Exported."""
    from engine.serve.export import export

    result = export(run, choice.format, quant=choice.quant, force=force, progress=progress)
    if choice.push:
        from engine.serve.push import push

        kind = f"{choice.format} {choice.quant}" if choice.quant else choice.format
        result = replace(result, pushed=push(Path(result.path), choice.push, message=f"llm-wizard export of "
                                             f"{run.name} ({kind})", progress=progress))
    return result


class ExportFlow(Screen):
    """The dashboard's `e`: the modal, a confirmation before replacing an earlier export, the export in a thread
    with its steps on the #run-message line, and a notification naming the folder (or the error's line)."""

    run: Path
    exporting = False  # one export at a time

    def message_line(self) -> Static:
        return self.query_one("#run-message", Static)

    def action_export(self) -> None:
        from engine.errors import UserError
        from engine.serve import gguf
        from engine.serve.merge import locate

        try:
            adapter = locate(self.run).adapter
        except (UserError, OSError) as err:
            self.notify(str(err), title="export", severity="error")
            return

        def chosen(choice: ExportChoice | None) -> None:
            if choice is None:
                return
            from engine.serve.export import default_out

            target = default_out(self.run, choice.format, choice.quant)
            if not target.exists():
                self.start_export(choice, force=False)
                return
            self.app.push_screen(ConfirmModal(f"Replace {target.name}?", f"{target} exists from an earlier export."),
                                 lambda yes: self.start_export(choice, force=True) if yes else None)

        self.app.push_screen(ExportModal(self.run.name, adapter=adapter, quants=gguf.available()), chosen)

    def start_export(self, choice: ExportChoice, *, force: bool) -> None:
        self.exporting = True
        self.refresh_bindings()
        self.message_line().update(Text(f"exporting {choice.format}…", style="italic"))
        self.export_model(choice, force)

    @work(thread=True, exclusive=True, exit_on_error=False, group="export")
    def export_model(self, choice: ExportChoice, force: bool) -> None:
        """The export `llm-wizard export` runs, in a thread; its steps on the message line."""

        def say(message: str) -> None:
            self.app.call_from_thread(self.message_line().update, Text(f"export: {message}…", style="italic"))

        try:
            result = export_run(self.run, choice, force=force, progress=say)
        except Exception as err:  # a UserError's line, or a library's message: never a traceback on screen
            self.app.call_from_thread(self.export_done, None, str(err) or type(err).__name__)
            return
        self.app.call_from_thread(self.export_done, result, None)

    def export_done(self, result: Any, error: str | None) -> None:
        self.exporting = False
        self.refresh_bindings()
        line = self.message_line()
        if result is None:
            line.update(Text(f"export failed: {error}", style="red"))
            self.notify(error or "export failed", title="export", severity="error", markup=False)
            return
        where = result.path + (f", pushed to {result.pushed['url']}" if result.pushed else "")
        line.update(Text(f"exported {result.format} to {where}"))
        self.notify(f"{result.format} in {where}", title="exported", markup=False, timeout=10)
