"""`llm-wizard attach`: the live dashboard for a run."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "the live dashboard for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("attach")
