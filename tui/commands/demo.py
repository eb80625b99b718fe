"""`llm-wizard demo`: train a tiny model from scratch on Python's own source, shown live (offline, CPU)."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "train a tiny model from scratch on Python's own source, shown live (offline, CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("demo")
