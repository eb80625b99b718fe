"""Shell commands shown for copying: a wrapped note above, then the commands one per line, never wrapped
(the block scrolls sideways when a line is wider than the terminal), `# comment` lines dimmed."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import ScrollableContainer, Vertical
from textual.widgets import Static


class CommandBlock(Vertical):
    DEFAULT_CSS = """
    CommandBlock { height: auto; padding: 0 1; margin-bottom: 1; }
    CommandBlock .commands-scroll { height: auto; max-height: 12; overflow-x: auto; overflow-y: auto; }
    CommandBlock .commands-lines { width: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", classes="commands-about")
        with ScrollableContainer(classes="commands-scroll"):
            yield Static("", classes="commands-lines")

    def show(self, about: Text, lines: list[str]) -> None:
        self.query_one(".commands-about", Static).update(about)
        block = Text(no_wrap=True, overflow="ignore")
        for i, line in enumerate(lines):
            block.append(("\n" if i else "") + line, style="#9e9e9e" if line.startswith("#") else "cyan")
        self.query_one(".commands-lines", Static).update(block)
