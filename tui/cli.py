"""The `llm-wizard` command: plain, it opens the wizard; with a command, it runs that command."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from engine import __version__
from engine.errors import UserError
from tui.commands import COMMANDS


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"tui.commands.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-wizard",
        description="Guided LLM training: will it fit, is the data enough, then steer the run live.",
    )
    parser.add_argument("--version", action="version", version=f"llm-wizard {__version__}")
    parser.add_argument("--runs-dir", metavar="DIR", help="where runs live (default: $LLM_WIZARD_RUNS "
                        "or ~/.local/share/llm-wizard/runs)")
    parser.add_argument("--plain", action="store_true", help="the wizard as plain prompts, no full-screen app")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _command(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        # Repeated here so `llm-wizard doctor --runs-dir X` works as well as before the command.
        p.add_argument("--runs-dir", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(p)
    return parser


def open_wizard(args: argparse.Namespace) -> int:
    """Plain `llm-wizard`: the Textual wizard, or its line-by-line form with --plain."""
    runs = getattr(args, "runs_dir", None)
    if getattr(args, "plain", False):
        from tui.plain import run_plain

        return run_plain(runs_dir=runs)
    from tui.app import make_app

    result = make_app(runs_dir=runs).run()
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command is None:
            return open_wizard(args)
        return int(_command(args.command).run(args) or 0)
    except UserError as err:
        from tui.output import error

        error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
