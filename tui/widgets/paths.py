"""Path completion for Inputs: the first file or folder that starts with what was typed (accept it
with → or End), folders with a trailing slash so the next level completes too."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester

SPECIAL = ("stdlib",)


class PathSuggester(Suggester):
    def __init__(self, *, extra: tuple[str, ...] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.extra = extra

    async def get_suggestion(self, value: str) -> str | None:
        for word in self.extra:
            if value and word.startswith(value) and word != value:
                return word
        if not value or not (value[0] in "/~." or os.sep in value):
            return None  # a Hub id, not a path
        expanded = os.path.expanduser(value)
        folder, prefix = os.path.split(expanded)
        try:
            names = sorted(n for n in os.listdir(folder or ".") if n.startswith(prefix) and not
                           (n.startswith(".") and not prefix.startswith(".")))
        except OSError:
            return None
        if not names or (names[0] == prefix and not os.path.isdir(os.path.join(folder, prefix))):
            return None
        name = names[0]
        done = value[: len(value) - len(prefix)] + name
        if Path(folder or ".", name).is_dir() and not done.endswith("/"):
            done += "/"
        return None if done == value else done
