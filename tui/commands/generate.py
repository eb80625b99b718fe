"""`llm-wizard generate`: sample text from a run's latest checkpoint or final model."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "sample text from a run's latest checkpoint or final model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("generate")
