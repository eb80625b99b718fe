"""Step 4: the training data. A text file, a folder of them, or `stdlib` (Python's own source, on
every machine); a preview of the first lines; the token count with a progress bar, counted in a
worker so the screen stays live on a large corpus."""

from __future__ import annotations

from dataclasses import dataclass
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

PREVIEW_LINES = 8


@dataclass(frozen=True)
class Corpus:
    files: list[Path]
    bytes: int


def find_corpus(source: str) -> Corpus:
    from engine.corpus import stdlib_corpus, text_files

    files = stdlib_corpus() if source == "stdlib" else text_files(source)
    return Corpus(files, sum(f.stat().st_size for f in files))


def preview(files: list[Path], lines: int = PREVIEW_LINES) -> str:
    """The first non-empty lines of the corpus, as the tokenizer will see them."""
    from engine.corpus import iter_text

    out: list[str] = []
    for f in files:
        for piece in iter_text(f, chunk_bytes=4096):
            out += [ln for ln in piece.splitlines() if ln.strip()]
            break
        if len(out) >= lines:
            break
    return "\n".join(ln[:200] for ln in out[:lines])


class CorpusFound(Message):
    def __init__(self, source: str, corpus: Corpus | None, preview: str, error: str | None = None) -> None:
        super().__init__()
        self.source, self.corpus, self.preview, self.error = source, corpus, preview, error


class TokensCounted(Message):
    """Progress of the count (many a second on a large corpus: stale ones may be dropped)."""

    def __init__(self, source: str, done_bytes: int, total_bytes: int, tokens: int, final: bool) -> None:
        super().__init__()
        self.source, self.done_bytes, self.total_bytes, self.tokens, self.final = (
            source, done_bytes, total_bytes, tokens, final)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TokensCounted) and not message.final and message.source == self.source


class DatasetScreen(WizardStep):
    STEP = 3

    def body(self) -> ComposeResult:
        with Vertical(id="dataset"):
            yield Label("Text file or folder (→ completes; `stdlib` = Python's own source):")
            yield Input(self.wizard.choices.dataset or "stdlib", suggester=PathSuggester(extra=("stdlib",)),
                        id="data-path")
            yield Static("", id="data-info")
            yield ProgressBar(total=100, show_eta=False, id="data-progress")
            yield Static("", id="data-preview")

    def on_mount(self) -> None:
        self.query_one("#data-path", Input).focus()
        self.load(self.query_one("#data-path", Input).value)

    def ready(self) -> bool:
        return "data_bytes" in self.wizard.choices.extra

    def on_input_changed(self, event: Input.Changed) -> None:
        self.load(event.value.strip())

    def load(self, source: str) -> None:
        c = self.wizard.choices
        c.dataset = source
        for key in ("data_bytes", "data_tokens", "data_files"):
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

        try:
            corpus = find_corpus(source)
            self.post_message(CorpusFound(source, corpus, preview(corpus.files)))
        except UserError as err:
            self.post_message(CorpusFound(source, None, "", str(err)))
            return
        self.count_tokens(source, corpus)

    def count_tokens(self, source: str, corpus: Corpus) -> None:
        """Byte-level count (the demo's tokenizer; an upper bound for BPE), file by file."""
        done = 0
        tokens = 0
        for i, f in enumerate(corpus.files):
            size = f.stat().st_size
            done += size
            tokens += size
            if i % 20 == 0:
                self.post_message(TokensCounted(source, done, corpus.bytes, tokens, False))
        self.post_message(TokensCounted(source, done, corpus.bytes, tokens, True))

    def on_corpus_found(self, message: CorpusFound) -> None:
        if message.source != self.wizard.choices.dataset:
            return
        info = self.query_one("#data-info", Static)
        if message.error or message.corpus is None:
            info.update(Text(message.error or "?", style="red"))
            self.query_one("#data-preview", Static).update("")
            return
        c = message.corpus
        self.wizard.choices.extra.update(data_bytes=c.bytes, data_files=len(c.files))
        info.update(Text.assemble((f"{len(c.files):,} file(s)", "bold"), f", {human_bytes(c.bytes)} of text"))
        self.query_one("#data-preview", Static).update(Text(message.preview, style="grey70", no_wrap=True,
                                                            overflow="ellipsis"))
        self.changed()

    def on_tokens_counted(self, message: TokensCounted) -> None:
        if message.source != self.wizard.choices.dataset:
            return
        bar = self.query_one("#data-progress", ProgressBar)
        bar.update(total=max(message.total_bytes, 1), progress=message.done_bytes)
        if message.final:
            self.wizard.choices.extra["data_tokens"] = message.tokens
            info = self.query_one("#data-info", Static)
            files = self.wizard.choices.extra.get("data_files", 0)
            info.update(Text.assemble((f"{files:,} file(s)", "bold"),
                                      f", {human_bytes(message.total_bytes)} of text, ",
                                      (f"{message.tokens:,} tokens", "bold green"), " at byte level (a BPE "
                                      "vocabulary gives fewer)"))
