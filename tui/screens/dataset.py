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
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # sources with columns to choose from


@dataclass(frozen=True)
class Corpus:
    files: list[Path]
    bytes: int


def find_corpus(source: str) -> Corpus:
    from engine.corpus import stdlib_corpus, text_files

    if source == "stdlib":
        files = stdlib_corpus()
    elif Path(source).expanduser().is_file():
        files = [Path(source).expanduser()]
    else:
        files = text_files(source)
    return Corpus(files, sum(f.stat().st_size for f in files))


def preview(source: str, files: list[Path], text_column: str | None, lines: int = PREVIEW_LINES) -> str:
    """The first non-empty lines (or rows of a JSONL/CSV/Parquet file) as training will see them."""
    from engine.datacheck import iter_documents

    out: list[str] = []
    for f in files:
        for text, _ in iter_documents(f, text_column):
            out += [ln for ln in text.splitlines() if ln.strip()][:lines]
            if len(out) >= lines:
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

    def __init__(self, source: str, done_bytes: int, total_bytes: int, tokens: int, final: bool,
                 method: str = "") -> None:
        super().__init__()
        self.source, self.done_bytes, self.total_bytes, self.tokens, self.final, self.method = (
            source, done_bytes, total_bytes, tokens, final, method)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TokensCounted) and not message.final and message.source == self.source


class DatasetScreen(WizardStep):
    STEP = 3

    def body(self) -> ComposeResult:
        with Vertical(id="dataset"):
            yield Label("Text file or folder, .jsonl .csv .parquet, or stdlib (Python's source); → completes")
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

        try:
            corpus = find_corpus(source)
            column = self.wizard.choices.text_column or None
            self.post_message(CorpusFound(source, corpus, preview(source, corpus.files, column)))
            self.count_tokens(source, corpus, column)
        except UserError as err:
            self.post_message(CorpusFound(source, None, "", str(err)))
        except Exception as err:  # a file the readers choke on: say so on the screen, never a traceback
            self.post_message(CorpusFound(source, None, "", f"cannot read {source}: {type(err).__name__}: {err}"))

    def count_tokens(self, source: str, corpus: Corpus, column: str | None) -> None:
        """Tokens as training will see them: the byte tokenizer counts UTF-8 bytes (exact); a model's
        tokenizer counts through engine.datacheck (exact up to a few hundred MB, sampled beyond)."""
        c = self.wizard.choices
        if c.technique == "scratch" and c.tokenizer == "byte" or source == "stdlib":
            from engine.corpus import iter_text

            done = tokens = 0
            for i, f in enumerate(corpus.files):
                tokens += sum(len(piece.encode("utf-8")) for piece in iter_text(f))
                done += f.stat().st_size
                if i % 10 == 0:
                    self.post_message(TokensCounted(source, done, corpus.bytes, tokens, False))
            method = "exact: byte tokenizer" if c.tokenizer == "byte" or c.technique != "scratch" \
                else "bytes: an upper bound until the BPE tokenizer is trained"
            self.post_message(TokensCounted(source, done, corpus.bytes, tokens, True, method))
            return
        from engine.datacheck import count_tokens, load_tokenizer

        try:
            tokenizer = None if c.technique == "scratch" else load_tokenizer(c.model)
        except Exception:  # no usable tokenizer for this model id: count by the bytes-per-token ratio
            tokenizer = None
        count = count_tokens(source, tokenizer=tokenizer, text_column=column,
                             progress=lambda d, t: self.post_message(TokensCounted(source, d, t, 0, False)))
        self.post_message(TokensCounted(source, corpus.bytes, corpus.bytes, count.tokens, True, count.method))

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
        self.query_one("#data-preview", Static).update(Text(message.preview, style="#b2b2b2", no_wrap=True,
                                                            overflow="ellipsis"))
        self.changed()

    def on_tokens_counted(self, message: TokensCounted) -> None:
        if message.source != self.wizard.choices.dataset:
            return
        bar = self.query_one("#data-progress", ProgressBar)
        bar.update(total=max(message.total_bytes, 1), progress=message.done_bytes)
        if message.final:
            self.wizard.choices.extra.update(data_tokens=message.tokens, data_method=message.method)
            info = self.query_one("#data-info", Static)
            files = self.wizard.choices.extra.get("data_files", 0)
            info.update(Text.assemble((f"{files:,} file(s)", "bold"),
                                      f", {human_bytes(message.total_bytes)} of text, ",
                                      (f"{message.tokens:,} tokens", "bold green"), f" ({message.method})"))
            self.changed()
