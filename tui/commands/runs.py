"""`llm-wizard runs`: list runs and their state; `llm-wizard runs compare A B ...`: runs side by side."""

from __future__ import annotations

import argparse

HELP = "list runs and their state; `runs compare A B ...` puts runs side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["compare"], help="compare: the runs named after it")
    parser.add_argument("ids", nargs="*", metavar="RUN", help="runs to compare (ids, unique parts, 'latest', folders)")
    parser.add_argument("--json", action="store_true",
                        help='a list of {"id", "path", "state", "technique", "step", "loss", "pid", "started", "message"}; '
                             'compare: {"runs": [...], "differences": {setting: [value per run]}}')


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "compare":
        return compare(args)
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
    colours = {"running": "green", "paused": "yellow", "done": "blue", "failed": "red", "crashed": "red",
               "stalled": "bold yellow", "damaged": "red"}
    table = Table(title=f"runs in {where}", title_justify="left")
    for col in ("id", "technique", "state", "step", "loss", "started"):
        table.add_column(col, justify="right" if col in ("step", "loss") else "left", no_wrap=col == "id")
    for r in runs:
        c = colours.get(r.state, "white")
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else ""
        state = f"[{c}]{r.state}[/]"
        if r.download and r.download.get("total_bytes"):  # a Hub model arriving before the first step
            state += f" [cyan]↓{(r.download.get('done_bytes') or 0) / r.download['total_bytes']:.0%}[/]"
        table.add_row(r.id, r.technique, state, str(r.step),
                      f"{r.loss:.4f}" if r.loss is not None else "", started)
    out().print(table)
    for r in runs:  # what a state the reader said means: why damaged, since when stalled
        if r.message and r.state in ("stalled", "damaged"):
            out().print(f"{r.id}: {r.state}: {r.message}", markup=False, highlight=False)
    return 0


def compare(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.paths import runs_dir
    from engine.runfolder.folder import resolve_run
    from engine.track.compare import spec_differences, summarize
    from tui.output import out, print_json
    from tui.screens.compare_view import compare_table

    if len(args.ids) < 2:
        raise UserError("runs compare: name two runs or more (ids, unique parts of them, or folders)", field="runs")
    where = runs_dir(getattr(args, "runs_dir", None))
    paths = [resolve_run(ref, where) for ref in args.ids]
    summaries, differences = [summarize(p) for p in paths], spec_differences(paths)
    if args.json:
        print_json({"runs": [s.to_dict() for s in summaries], "differences": differences})
        return 0
    out().print(compare_table(summaries, differences))
    return 0
