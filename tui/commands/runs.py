"""`llm-wizard runs`: list runs and their state."""

from __future__ import annotations

import argparse

HELP = "list runs and their state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help='a list of {"id", "path", "state", "technique", "step", "loss", "pid", "started"}')


def run(args: argparse.Namespace) -> int:
    import time

    from rich.table import Table

    from engine.paths import runs_dir
    from engine.runfolder.folder import list_runs
    from tui.output import out, print_json

    where = runs_dir(getattr(args, "runs_dir", None))
    runs = list_runs(where)
    if args.json:
        print_json([r.to_dict() for r in runs])
        return 0
    from tui.commands.sweep import sweeps_table

    if (sweeps := sweeps_table(where)) is not None:
        out().print(sweeps)
    if not runs and sweeps is None:
        out().print(f"no runs in {where} (start one with `llm-wizard train presets/tiny.toml`)")
        return 0
    colours = {"running": "green", "paused": "yellow", "done": "blue", "failed": "red", "crashed": "red"}
    table = Table(title=f"runs in {where}", title_justify="left")
    for col in ("id", "technique", "state", "step", "loss", "started"):
        table.add_column(col, justify="right" if col in ("step", "loss") else "left", no_wrap=col == "id")
    for r in runs:
        c = colours.get(r.state, "white")
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else ""
        table.add_row(r.id, r.technique, f"[{c}]{r.state}[/]", str(r.step),
                      f"{r.loss:.4f}" if r.loss is not None else "", started)
    out().print(table)
    return 0
