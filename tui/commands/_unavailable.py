"""Shared body of commands that a later release builds."""

from __future__ import annotations

import argparse

from tui.output import error


def not_yet(name: str) -> int:
    error(f"`llm-wizard {name}` is not available yet in this version")
    return 2


def add_passthrough(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
