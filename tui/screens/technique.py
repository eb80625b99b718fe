"""Step 2: how to train. The techniques of the book's chapter 5, what each needs and when to choose it, with
a recommendation from the hardware (and from the data, once it is known); for preference tuning the book's
caveat and how to afford it here (LoRA-DPO on small GPUs)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tui.screens.base import WizardStep
from tui.techniques import BY_KEY, PREFERENCE, TECHNIQUES, TechniqueInfo, preference_advice, recommend


def details(info: TechniqueInfo, recommended: bool, why: str, advice: str = "") -> Text:
    text = Text()
    text.append(info.title, style="bold")
    text.append(f"  (book {info.book})\n", style="#9e9e9e")
    if recommended:
        text.append("★ recommended: ", style="bold green")
        text.append(why + "\n", style="green")
    for label, value in (("Memory", info.memory), ("Data", info.data), ("Choose it when", info.when)):
        text.append(f"\n{label}: ", style="bold")
        text.append(value)
    if info.caveat:
        text.append("\n\nThe book's caveat: ", style="bold yellow")
        text.append(info.caveat)
    if advice:
        text.append("\nHere: ", style="bold")
        text.append(advice)
    return text


class TechniqueScreen(WizardStep):
    STEP = 1

    def body(self) -> ComposeResult:
        with Horizontal(id="technique"):
            yield OptionList(*(Option(t.title, id=t.key) for t in TECHNIQUES), id="techniques")
            with VerticalScroll(id="technique-detail"):
                yield Static("", id="technique-text")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = [t.key for t in TECHNIQUES].index(self.wizard.choices.technique)
        options.focus()
        self.watch(self.app, "hardware", lambda _: self.show(), init=True)

    def recommendation(self) -> tuple[str, str]:
        return recommend(self.wizard.hardware, self.wizard.choices.extra.get("data_tokens"))  # type: ignore[arg-type]

    def show(self) -> None:
        options = self.query_one(OptionList)
        best, why = self.recommendation()
        for t in TECHNIQUES:
            label = Text(t.title)
            if t.key == best:
                label.append(" ★", style="green")
            options.replace_option_prompt(t.key, label)
        key = self.wizard.choices.technique
        advice = preference_advice(self.wizard.hardware) if key in PREFERENCE else ""  # type: ignore[arg-type]
        self.query_one("#technique-text", Static).update(details(BY_KEY[key], key == best, why, advice))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.wizard.choices.technique = event.option.id
            self.show()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_next()
