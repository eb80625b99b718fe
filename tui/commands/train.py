"""`llm-wizard train`: start a run from a spec (detached); prints the run id and folder."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "start a run from a spec (detached); prints the run id and folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("train")
