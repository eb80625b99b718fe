"""`llm-wizard attach`: follow a run's live events (the dashboard's plain-text stand-in)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.runfolder.events import Event

HELP = "follow a run's live events: loss, learning rate, checkpoints, alerts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the run ends")
    parser.add_argument("--last", type=int, default=20, help="how many past events to show first (default 20)")
    parser.add_argument("--json", action="store_true", help="print the events as JSON lines")
    parser.add_argument("--text", action="store_true",
                        help="print the last events instead of opening the dashboard (the default off a terminal)")


def describe(event: Event) -> str:
    """One line of Rich markup for an event (its texts escaped: a message may hold brackets)."""
    from rich.markup import escape

    from engine.runfolder import events as ev

    if isinstance(event, ev.Metrics):
        known = [f"lr {event.train_lr:.3g}" if event.train_lr is not None else "",  # null: a hosted job's unknowns
                 f"|g| {event.train_grad_norm:.3g}" if event.train_grad_norm is not None else "",
                 f"{event.train_tok_per_s:,.0f} tok/s" if event.train_tok_per_s is not None else "",
                 f"{event.train_step_ms:.0f} ms/step" if event.train_step_ms is not None else ""]
        return "  ".join([f"step {event.step:>6}  loss {event.train_loss:.4f}", *filter(None, known),
                          f"epoch {event.epoch:.3f}  eta {event.eta_s:.0f}s"])
    if isinstance(event, ev.Eval):
        return f"[cyan]step {event.step:>6}  eval loss {event.eval_loss:.4f}[/]"
    if isinstance(event, ev.Checkpoint):
        return f"[blue]step {event.step:>6}  checkpoint {event.name}[/]"
    if isinstance(event, ev.Alert):  # info alerts (the batch finder's choice) are notes, not warnings
        style, label = {"info": ("cyan", "note"), "error": ("bold red", "alert")}.get(event.severity,
                                                                                    ("bold yellow", "alert"))
        suggest = f" -> {event.suggest}" if event.suggest else ""
        step = "" if event.step is None else event.step
        return f"[{style}]step {step:>6}  {label} ({event.kind}): {escape(event.message)}{escape(suggest)}[/]"
    if isinstance(event, ev.ControlAck):
        return f"[{'green' if event.ok else 'red'}]{event.cmd}: {escape(event.message)}[/]"
    if isinstance(event, ev.Error):
        return f"[bold red]error: {escape(event.message)}[/]"
    if isinstance(event, ev.Download):
        from engine.hub.download import progress_line

        line = progress_line(event.repo, event.done_bytes, event.total_bytes, event.rate, event.eta_s,
                             event.finished, bar=20)
        return f"[cyan]{'downloaded' if event.finished else 'downloading'} {escape(line)}[/]"
    if isinstance(event, ev.Done):
        return f"[bold]done ({event.state}) at step {event.step}[/]"
    if isinstance(event, ev.State):
        return f"[magenta]{event.state}[/] {escape(event.message)}"
    return f"[magenta]{event.TYPE}[/]"


def run(args: argparse.Namespace) -> int:
    import json

    from engine.errors import UserError
    from engine.paths import runs_dir
    from engine.runfolder import events as ev
    from engine.runfolder import folder as runfolder
    from tui.output import out

    run_path = runfolder.resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))
    status = runfolder.current_status(run_path)
    if status is not None and status.state == "damaged":
        raise UserError(f"run {run_path.name}: {status.message}", field="run")
    ev.end_offset(run_path)  # a FIFO or a link in place of events.jsonl: one line here, never a hang
    if not (args.follow or args.json or args.text) and sys.stdout.isatty():  # the live dashboard
        from tui.app import make_app

        return int(make_app(runs_dir=getattr(args, "runs_dir", None), attach=str(run_path)).run() or 0)
    batch = ev.last(run_path, max(0, args.last))  # read from the end: bounded, whatever the log's size
    console = out()

    def show(event: Event) -> None:
        if args.json:
            print(json.dumps(event.to_dict()), flush=True)
        else:
            console.print(describe(event), markup=True, highlight=False)

    def skipped(problem: ev.Skipped) -> None:  # on stderr: --json's stdout stays one event a line
        print(f"warning: {problem.describe()}", file=sys.stderr, flush=True)

    for problem in batch.skipped:
        skipped(problem)
    for event in batch:
        show(event)
    status = runfolder.current_status(run_path)
    if not args.follow or status is None or not status.live:
        if not args.json:
            state, step = (status.state, status.step or 0) if status is not None else ("unknown", 0)
            console.print(f"[dim]{run_path.name}: {state} at step {step}[/]")
            _vm_hint(console, state)
            if status is not None and status.state in ("stalled", "crashed") and status.message:
                console.print(f"[bold yellow]{status.state}[/]: {status.message}", highlight=False)
        return 0
    if status.state == "stalled" and not args.json:
        console.print(f"[bold yellow]stalled[/]: {status.message}", highlight=False)
    try:
        for event, _ in ev.follow(run_path, batch.offset, live=runfolder.live(run_path), on_skip=skipped):
            show(event)
    except KeyboardInterrupt:
        return 0  # detaching never stops the run
    if not args.json:
        _vm_hint(console, "done")
    return 0


def _vm_hint(console: object, state: str) -> None:
    """On a VM that `llm-wizard cloud create` made, an ended run's last line offers to stop or delete it."""
    from engine.cloud.marker import vm_hint
    from engine.runfolder.folder import LIVE_STATES

    if state not in LIVE_STATES and (hint := vm_hint()) is not None:
        console.print(f"[yellow]{hint}[/]", highlight=False)  # type: ignore[attr-defined]
