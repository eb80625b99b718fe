"""`llm-wizard --plain`: the wizard as questionary prompts (built after the Textual wizard)."""

from __future__ import annotations

from tui.commands._unavailable import not_yet


def run_plain(*, runs_dir: str | None = None) -> int:
    return not_yet("--plain")
