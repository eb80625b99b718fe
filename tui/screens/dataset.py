"""Step 4: the training data. A text file or folder, a table (JSONL, JSON, CSV, Parquet, a dataset folder), a
Slack export, a cached Hub dataset, or `stdlib` (Python's own source, on every machine).

After the path: the detected format and where it was read from, the settings of a table or an export
(format, chat template, which turns are trained, the Slack user from a list with message counts; ←/→
change the highlighted one, space lists its values), an editable column mapping (`prompt=question,
response=answer`; empty: detected), and a preview of the first examples as trained (masked parts dim,
special tokens highlighted) with the chosen model's tokenizer, else the rows as read. Reading, the
preview and the token count run in a worker, so the screen stays live on a large corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from engine import vocabulary
from tui.corpus import Corpus, chosen_mapping, mapping_text
from tui.output import human_bytes
from tui.screens.base import WizardStep
from tui.widgets.paths import PathSuggester
from tui.wizard import Choices

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".zst")  # sources with columns
FORMATS = tuple(f for f in vocabulary.DATA_FORMATS if f not in ("slack", "hub"))  # found from the path


@dataclass(frozen=True)
class Setting:
    key: str  # Choices attribute
    label: str
    values: tuple[str, ...]


class CorpusFound(Message):
    def __init__(self, key: str, corpus: Corpus | None, preview: Text, error: str | None = None,
                 template_note: str = "") -> None:
        super().__init__()
        self.key, self.corpus, self.preview, self.error, self.template_note = key, corpus, preview, error, template_note


class TokensCounted(Message):
    """Progress of the count (many a second on a large corpus: stale ones may be dropped)."""

    def __init__(self, key: str, done_bytes: int, total_bytes: int, tokens: int, final: bool,
                 method: str = "") -> None:
        super().__init__()
        self.key, self.done_bytes, self.total_bytes, self.tokens, self.final, self.method = (
            key, done_bytes, total_bytes, tokens, final, method)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TokensCounted) and not message.final and message.key == self.key


def scan_key(c: Choices) -> str:
    """Everything the scan depends on: a message for other settings is stale."""
    return repr((c.dataset, sorted(c.data_settings().items()), c.technique, c.model, c.tokenizer, c.seq_len))


class DatasetScreen(WizardStep):
    STEP = 3
    BINDINGS = [
        Binding("right", "change(1)", "Next value", key_display="→", tooltip="The next value of this setting"),
        Binding("left", "change(-1)", "Previous", key_display="←", tooltip="The previous value of this setting"),
        Binding("space", "choose", "Choose", tooltip="Pick this setting's value from a list"),
    ]
    corpus: Corpus | None = None
    key = ""
    error: str | None = None
    template_note = "auto: the model's own chat template (when it has one)"

    def body(self) -> ComposeResult:
        c = self.wizard.choices
        with Vertical(id="dataset"):
            yield Label("File/folder (.txt .jsonl .json .csv .parquet), Slack export, Hub id or stdlib")
            yield Input(c.dataset, suggester=PathSuggester(extra=("stdlib",)), id="data-path")
            yield Static("", id="data-info")
            yield OptionList(id="data-settings")
            yield Input(mapping_text(chosen_mapping(c)), placeholder="columns: role=column, e.g. prompt=question, "
                        "response=answer (empty: detected)", id="data-columns")
            yield ProgressBar(total=100, show_eta=False, id="data-progress")
            yield Static("", id="data-preview")

    def on_mount(self) -> None:
        self.query_one("#data-path", Input).focus()
        self.load()

    def ready(self) -> bool:
        c = self.wizard.choices
        return "data_tokens" in c.extra and not (self.corpus is not None and self.corpus.kind == "slack"
                                                 and not c.slack_user)

    # -- the settings ----------------------------------------------------------------------------------

    def settings(self) -> list[Setting]:
        """The rows shown: none for plain text, else the format, template and train-on, or the Slack user."""
        corpus, c = self.corpus, self.wizard.choices
        if c.dataset in ("", "stdlib") or (corpus is not None and corpus.kind == "text"):
            return []
        if corpus is not None and corpus.kind == "slack":
            return [Setting("slack_user", "Slack user", tuple(u[0] for u in corpus.slack_users)),
                    Setting("template", "template", vocabulary.CHAT_TEMPLATES),
                    Setting("train_on", "train on", vocabulary.TRAIN_ON)]
        rows = [Setting("data_format", "format", FORMATS)]
        if corpus is None or corpus.is_chat:
            rows += [Setting("template", "template", vocabulary.CHAT_TEMPLATES),
                     Setting("train_on", "train on", vocabulary.TRAIN_ON)]
        return rows

    def shown_value(self, s: Setting) -> str:
        value = getattr(self.wizard.choices, s.key)
        if s.key == "slack_user":
            users = {u[0]: f"{u[1]} ({u[2]:,} messages)" for u in (self.corpus.slack_users if self.corpus else ())}
            return users.get(value, "choose (space)")
        if s.key == "data_format" and value == "auto" and self.corpus is not None:
            return f"auto: {self.corpus.format}"
        return value

    def hint(self, s: Setting) -> str:
        if s.key == "template":
            return self.template_note if self.wizard.choices.template == "auto" else "a named layout, set on the tokenizer"
        return {"train_on": "which turns carry the loss", "data_format": "the rows' layout",
                "slack_user": "whose replies are learned"}.get(s.key, "")

    def fill(self) -> None:
        listing = self.query_one("#data-settings", OptionList)
        rows = self.settings()
        keep = listing.highlighted
        listing.clear_options()
        for s in rows:
            listing.add_option(Option(Text.assemble((f"{s.label:<11}", "bold"), (f"‹ {self.shown_value(s)} ›", "cyan"),
                                                    (f"  {self.hint(s)}", "#9e9e9e")), id=s.key))
        listing.display = bool(rows)
        if rows:
            listing.highlighted = min(keep or 0, len(rows) - 1)
        corpus = self.corpus
        columns = self.query_one("#data-columns", Input)
        columns.display = (corpus.kind in ("table", "hub")) if corpus is not None else \
            Path(self.wizard.choices.dataset).suffix.lower() in TABLE_SUFFIXES
        if corpus is not None and corpus.columns:
            columns.placeholder = f"columns: {mapping_text(corpus.columns)} (detected; type role=column to change)"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("change", "choose"):
            listing = self.query_one("#data-settings", OptionList)
            return listing.has_focus and listing.highlighted is not None
        return super().check_action(action, parameters)

    def highlighted(self) -> Setting | None:
        listing = self.query_one("#data-settings", OptionList)
        rows = self.settings()
        return rows[listing.highlighted] if listing.highlighted is not None and listing.highlighted < len(rows) else None

    def action_change(self, delta: int) -> None:
        s = self.highlighted()
        if s is None or not s.values:
            return
        value = getattr(self.wizard.choices, s.key)
        at = s.values.index(value) if value in s.values else -1
        self.set_setting(s, s.values[(at + delta) % len(s.values)])

    def action_choose(self) -> None:
        from tui.modals.choose import Choice, ChooseModal

        s = self.highlighted()
        if s is None or not s.values:
            return
        current = getattr(self.wizard.choices, s.key)
        if s.key == "slack_user" and self.corpus is not None:
            labels = [f"{u[1]} ({u[2]:,} messages)" for u in self.corpus.slack_users]
        else:
            labels = list(s.values)

        def picked(index: int | None) -> None:
            if index is not None:
                self.set_setting(s, s.values[index])

        self.app.push_screen(ChooseModal(s.label, [Choice(v) for v in labels],
                                         s.values.index(current) if current in s.values else None), picked)

    def set_setting(self, s: Setting, value: str) -> None:
        setattr(self.wizard.choices, s.key, value)
        self.load()

    # -- reading ---------------------------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        c = self.wizard.choices
        if event.input.id == "data-columns":
            from tui.corpus import apply_mapping, parse_mapping

            try:
                mapping = parse_mapping(event.value)
            except ValueError as err:
                self.show_error(f"columns: {err}")
                return
            if mapping == chosen_mapping(c):
                return
            apply_mapping(c, mapping)
        else:
            if event.value.strip() == c.dataset:
                return
            c.dataset = event.value.strip()
            self.corpus = None  # another source: its own format, columns and users
            c.data_format, c.slack_user = "auto", ""
        self.load()

    def load(self) -> None:
        c = self.wizard.choices
        for key in ("data_bytes", "data_tokens", "data_files", "data_method"):
            c.extra.pop(key, None)
        self.key = scan_key(c)
        self.error = None
        self.fill()
        self.changed()
        if not c.dataset:
            self.query_one("#data-info", Static).update("")
            return
        self.query_one("#data-info", Static).update(Text("reading…", style="italic"))
        self.scan(self.key, replace(c, extra={}))

    @work(thread=True, exclusive=True, exit_on_error=False, group="data")
    def scan(self, key: str, c: Choices) -> None:
        from engine.errors import UserError
        from tui.corpus import (count_tokens, describe, load_tokenizer, make_source, preview, scratch_refusal,
                                shown_preview, template_note)

        try:
            source = make_source(c)
            corpus = describe(source)
            if (refusal := scratch_refusal(c, corpus)) is not None:
                self.post_message(CorpusFound(key, corpus, Text(""), refusal))
                return
            if corpus.kind == "slack" and not c.slack_user:
                self.post_message(CorpusFound(key, corpus, Text("choose whose replies are learned: the Slack user "
                                                                "row (space lists them)", style="italic")))
                return
            tokenizer = load_tokenizer(c) if corpus.kind != "text" else None
            shown = shown_preview(source, tokenizer) if tokenizer is not None else \
                Text(preview(source), style="#b2b2b2", no_wrap=True, overflow="ellipsis")
            self.post_message(CorpusFound(key, corpus, shown, None, template_note(tokenizer)))
            tokens, method = count_tokens(c, lambda d, t: self.post_message(TokensCounted(key, d, t, 0, False)),
                                          tokenizer=tokenizer)
            self.post_message(TokensCounted(key, 1, 1, tokens, True, method))
        except UserError as err:
            self.post_message(CorpusFound(key, None, Text(""), str(err)))
        except Exception as err:  # a file the readers choke on: say so on the screen, never a traceback
            self.post_message(CorpusFound(key, None, Text(""), f"cannot read {c.dataset}: {type(err).__name__}: {err}"))

    def show_error(self, message: str) -> None:
        self.error = message
        self.query_one("#data-info", Static).update(Text(message, style="red"))
        self.changed()

    def on_corpus_found(self, message: CorpusFound) -> None:
        if message.key != self.key:
            return
        if message.corpus is not None:
            self.corpus = message.corpus
            self.template_note = message.template_note or self.template_note
            self.wizard.choices.extra.update(data_bytes=message.corpus.bytes, data_files=message.corpus.files)
        self.fill()
        self.query_one("#data-preview", Static).update(message.preview)
        if message.error:
            self.show_error(message.error)
            return
        self.query_one("#data-info", Static).update(self.summary(self.corpus))
        self.changed()

    @staticmethod
    def summary(c: Corpus | None) -> Text:
        if c is None:
            return Text("")
        where = "a cached Hub dataset" if c.kind == "hub" else \
            f"{c.files:,} {'text ' if c.kind == 'text' else ''}file(s)"
        text = Text.assemble((where, "bold"), f", {human_bytes(c.bytes)}")
        if c.kind != "text":
            text.append_text(Text.assemble(": ", (c.source, "bold cyan")))
        return text

    def on_tokens_counted(self, message: TokensCounted) -> None:
        if message.key != self.key or self.error:
            return
        bar = self.query_one("#data-progress", ProgressBar)
        bar.update(total=max(message.total_bytes, 1), progress=message.done_bytes)
        if message.final:
            self.wizard.choices.extra.update(data_tokens=message.tokens, data_method=message.method)
            info = self.query_one("#data-info", Static)
            info.update(self.summary(self.corpus).append_text(Text.assemble(
                ", ", (f"{message.tokens:,} tokens", "bold green"), f" ({message.method})")))
            self.changed()
