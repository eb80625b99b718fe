"""Step 4: the training data. A text file, a folder of them, or `stdlib` (Python's own source, on
every machine); a preview of the first lines; the token count with a progress bar, counted in a
worker so the screen stays live on a large corpus."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ProgressBar, Static

from tui.output import human_bytes
from tui.screens.base import WizardStep
from tui.widgets.paths import PathSuggester
from tui.corpus import Corpus, count_tokens, describe, make_source, preview

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # sources with columns to choose from


class CorpusFound(Message):
    def __init__(self, source: str, corpus: Corpus | None, preview: str, error: str | None = None) -> None:
        super().__init__()
        self.source, self.corpus, self.preview, self.error = source, corpus, preview, error


class TokensCounted(Message):
    """Progress of the count (many a second on a large corpus: stale ones may be dropped)."""

    def __init__(self, source: str, done_bytes: int, total_bytes: int, tokens: int, final: bool,
                 method: str = "") -> None:
        super().__init__()
        self.source, self.done_bytes, self.total_bytes, self.tokens, self.final, self.method = (
            source, done_bytes, total_bytes, tokens, final, method)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TokensCounted) and not message.final and message.source == self.source


class DatasetScreen(WizardStep):
    STEP = 3
    corpus: Corpus | None = None

    def body(self) -> ComposeResult:
        with Vertical(id="dataset"):
            yield Label("File or folder (.txt .jsonl .csv .parquet, Slack export), Hub id, or stdlib")
            yield Input(self.wizard.choices.dataset, suggester=PathSuggester(extra=("stdlib",)),
                        id="data-path")
            yield Input(self.wizard.choices.text_column, placeholder="text column (JSONL/CSV/Parquet; empty: "
                        "found by name)", id="data-column")
            yield Static("", id="data-info")
            yield ProgressBar(total=100, show_eta=False, id="data-progress")
            yield Static("", id="data-preview")

    def on_mount(self) -> None:
        self.query_one("#data-path", Input).focus()
        self.load(self.query_one("#data-path", Input).value)

    def ready(self) -> bool:
        return "data_tokens" in self.wizard.choices.extra

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "data-column":
            self.wizard.choices.text_column = event.value.strip()
            self.load(self.wizard.choices.dataset)
        else:
            self.load(event.value.strip())

    def load(self, source: str) -> None:
        c = self.wizard.choices
        c.dataset = source
        self.query_one("#data-column", Input).display = Path(source).suffix.lower() in TABLE_SUFFIXES
        for key in ("data_bytes", "data_tokens", "data_files", "data_method"):
            c.extra.pop(key, None)
        self.changed()
        if not source:
            self.query_one("#data-info", Static).update("")
            return
        self.query_one("#data-info", Static).update(Text("reading…", style="italic"))
        self.scan(source)

    @work(thread=True, exclusive=True, exit_on_error=False, group="data")
    def scan(self, source: str) -> None:
        from engine.errors import UserError

        c = self.wizard.choices
        try:
            data = make_source(source, c.text_column or None)
            self.post_message(CorpusFound(source, describe(data), preview(data)))
            tokens, method = count_tokens(c, lambda d, t: self.post_message(TokensCounted(source, d, t, 0, False)))
            self.post_message(TokensCounted(source, 1, 1, tokens, True, method))
        except UserError as err:
            self.post_message(CorpusFound(source, None, "", str(err)))
        except Exception as err:  # a file the readers choke on: say so on the screen, never a traceback
            self.post_message(CorpusFound(source, None, "", f"cannot read {source}: {type(err).__name__}: {err}"))

    def on_corpus_found(self, message: CorpusFound) -> None:
        if message.source != self.wizard.choices.dataset:
            return
        info = self.query_one("#data-info", Static)
        self.corpus = message.corpus
        if message.error or message.corpus is None:
            info.update(Text(message.error or "?", style="red"))
            self.query_one("#data-preview", Static).update("")
            return
        c = message.corpus
        self.wizard.choices.extra.update(data_bytes=c.bytes, data_files=c.files)
        info.update(self.summary(c))
        self.query_one("#data-preview", Static).update(Text(message.preview, style="#b2b2b2", no_wrap=True,
                                                            overflow="ellipsis"))
        self.changed()

    @staticmethod
    def summary(c: Corpus | None) -> Text:
        if c is None:
            return Text("")
        where = "a cached Hub dataset" if c.kind == "hub" else f"{c.files:,} {c.kind} file(s)"
        return Text.assemble((where, "bold"), f", {human_bytes(c.bytes)}")

    def on_tokens_counted(self, message: TokensCounted) -> None:
        if message.source != self.wizard.choices.dataset:
            return
        bar = self.query_one("#data-progress", ProgressBar)
        bar.update(total=max(message.total_bytes, 1), progress=message.done_bytes)
        if message.final:
            self.wizard.choices.extra.update(data_tokens=message.tokens, data_method=message.method)
            info = self.query_one("#data-info", Static)
            info.update(self.summary(self.corpus).append_text(Text.assemble(
                ", ", (f"{message.tokens:,} tokens", "bold green"), f" ({message.method})")))
            self.changed()
