"""`llm-wizard runs`: list runs and their state."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "list runs and their state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("runs")
