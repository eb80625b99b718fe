"""`llm-wizard control`: pause | resume | save | stop | lr FACTOR | rollback STEP | rescue."""

from __future__ import annotations

import argparse

from tui.commands._unavailable import add_passthrough, not_yet

HELP = "pause | resume | save | stop | lr FACTOR | rollback STEP | rescue"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_passthrough(parser)


def run(args: argparse.Namespace) -> int:
    return not_yet("control")
