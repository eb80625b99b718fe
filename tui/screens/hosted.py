"""Step 3 for a hosted technique (OpenAI fine-tuning): the service's base model, the ft: model's suffix and the
epochs, with the caveat said plainly (the data leaves this machine; every trained token is billed) and whether
OPENAI_API_KEY is set (never its value: the key is read from the environment and written nowhere). The memory
checks and the local training options do not apply, so the wizard goes from the data to the review."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label, Static

from engine.techniques.openai import DEFAULTS
from tui.screens.base import WizardStep
from tui.techniques import hosted_key_note


def key_line() -> Text:
    is_set, line = hosted_key_note()
    return Text(line, style="green" if is_set else "bold red")


class HostedScreen(WizardStep):
    STEP = 2

    def body(self) -> ComposeResult:
        c = self.wizard.choices
        opts = c.extra.get("hosted_options", {})
        with Vertical(id="model"):
            yield Static(Text.assemble(("Hosted fine-tuning: ", "bold yellow"), "your data leaves this machine for "
                                       "the service, and every trained token is billed (tokens x epochs; the run "
                                       "estimates the cost before it uploads)."), id="hosted-caveat")
            yield Label("Base model to fine-tune:")
            yield Input(c.model if c.model and "/" not in c.model else DEFAULTS["model"], id="hosted-model")
            yield Label("Suffix of the fine-tuned model's name (optional, up to 64 characters):")
            yield Input(str(opts.get("suffix", "")), placeholder="e.g. support-bot", id="hosted-suffix")
            yield Label("Epochs: auto, or 1 to 50:")
            yield Input(str(opts.get("n_epochs", "auto")), id="hosted-epochs")
            yield Static(key_line(), id="model-info")

    def on_mount(self) -> None:
        self.query_one("#hosted-model", Input).focus()
        self._read()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._read()
        self.changed()

    def _read(self) -> None:
        c = self.wizard.choices
        c.model = self.query_one("#hosted-model", Input).value.strip()
        options: dict[str, object] = {}
        if suffix := self.query_one("#hosted-suffix", Input).value.strip():
            options["suffix"] = suffix
        epochs = self.query_one("#hosted-epochs", Input).value.strip() or "auto"
        options["n_epochs"] = int(epochs) if epochs.isdigit() else epochs
        c.extra["hosted_options"] = options

    def ready(self) -> bool:
        c = self.wizard.choices
        opts = c.extra.get("hosted_options", {})
        epochs, suffix = opts.get("n_epochs", "auto"), str(opts.get("suffix", ""))
        return bool(c.model) and len(suffix) <= 64 and (epochs == "auto" or isinstance(epochs, int) and 1 <= epochs <= 50)
