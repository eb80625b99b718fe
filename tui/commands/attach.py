"""`llm-wizard attach`: follow a run's live events (the dashboard's plain-text stand-in)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "follow a run's live events: loss, learning rate, checkpoints, alerts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the run ends")
    parser.add_argument("--last", type=int, default=20, help="how many past events to show first (default 20)")
    parser.add_argument("--json", action="store_true", help="print the events as JSON lines")
    parser.add_argument("--text", action="store_true",
                        help="print the last events instead of opening the dashboard (the default off a terminal)")


def describe(event: dict[str, Any]) -> str:
    """One line of Rich markup for an event (its texts escaped: a message may hold brackets)."""
    from rich.markup import escape

    kind, step = event.get("type"), event.get("step", "")
    if kind == "metrics":
        eta = event.get("eta_s")
        return (f"step {step:>6}  loss {event.get('train/loss', float('nan')):.4f}  "
                f"lr {event.get('train/lr', 0):.3g}  |g| {event.get('train/grad_norm', 0):.3g}  "
                f"{event.get('train/tok_per_s', 0):,.0f} tok/s  {event.get('train/step_ms', 0):.0f} ms/step  "
                f"epoch {event.get('epoch', 0):.3f}" + (f"  eta {eta:.0f}s" if eta is not None else ""))
    if kind == "eval":
        return f"[cyan]step {step:>6}  eval loss {event.get('eval/loss', float('nan')):.4f}[/]"
    if kind == "checkpoint":
        return f"[blue]step {step:>6}  checkpoint {event.get('name')}[/]"
    if kind == "alert":  # info alerts (the batch finder's choice) are notes, not warnings
        severity = event.get("severity", "warning")
        style, label = {"info": ("cyan", "note"), "error": ("bold red", "alert")}.get(severity, ("bold yellow", "alert"))
        suggest = f" -> {event['suggest']}" if event.get("suggest") else ""
        return f"[{style}]step {step:>6}  {label} ({event.get('kind')}): {escape(str(event.get('message')))}{escape(suggest)}[/]"
    if kind == "control_ack":
        colour = "green" if event.get("ok") else "red"
        return f"[{colour}]{event.get('cmd')}: {escape(str(event.get('message')))}[/]"
    if kind == "error":
        return f"[bold red]error: {escape(str(event.get('message')))}[/]"
    if kind == "done":
        return f"[bold]done ({event.get('state')}) at step {step}[/]"
    return f"[magenta]{event.get('state', kind)}[/] {escape(str(event.get('message', '')))}"


def run(args: argparse.Namespace) -> int:
    import json

    from engine.runfolder import folder as runfolder
    from engine.paths import runs_dir
    from tui.output import out

    run_path = runfolder.resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))
    if not (args.follow or args.json or args.text) and sys.stdout.isatty():  # the live dashboard
        from tui.app import make_app

        return int(make_app(runs_dir=getattr(args, "runs_dir", None), attach=str(run_path)).run() or 0)
    events, offset = runfolder.read_events(run_path)
    console = out()

    def show(event: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            console.print(describe(event), markup=True, highlight=False)

    for event in events[-args.last:] if args.last else []:
        show(event)
    status = runfolder.read_status(run_path)
    if not args.follow or status.get("state") not in runfolder.LIVE_STATES:
        if not args.json:
            console.print(f"[dim]{run_path.name}: {status.get('state', 'unknown')} at step {status.get('step', 0)}[/]")
        return 0
    try:
        for event, _ in runfolder.follow_events(run_path, offset):
            show(event)
    except KeyboardInterrupt:
        pass  # detaching never stops the run
    return 0
