"""`llm-wizard estimate`: memory and data-size checks for a model, technique and options."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "memory and data-size checks for a model, technique and options"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("estimate")
