"""The messages the dashboard's workers post (a thread never touches a widget: it posts one of these).
Those that arrive many times a second can replace an unhandled older one (`can_replace`)."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from engine.runfolder import events as ev
from engine.runfolder.status import Status


class RunEvents(Message):
    """New events (and lines that were not events, with why) since the last read, and the status."""

    def __init__(self, events: list[ev.Event], skipped: list[ev.Skipped], status: Status | None) -> None:
        super().__init__()
        self.events, self.skipped, self.status = events, skipped, status


class RunStatus(Message):
    """Only the status changed; a newer one makes an unhandled older one pointless."""

    def __init__(self, status: Status | None) -> None:
        super().__init__()
        self.status = status

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunStatus)


class GpuReadings(Message):
    def __init__(self, gpus: list[Any], status: str = "ok") -> None:
        super().__init__()
        self.gpus, self.status = gpus, status

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuReadings)


class Checkpoints(Message):
    def __init__(self, items: list[tuple[str, int]]) -> None:
        super().__init__()
        self.items = items


class SampleText(Message):
    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text, self.ok = text, ok


class Compared(Message):
    """The compare view's runs, read from their folders: summaries (engine/track/compare.py) and spec differences."""

    def __init__(self, summaries: list[Any], differences: dict[str, list[Any]]) -> None:
        super().__init__()
        self.summaries, self.differences = summaries, differences
