"""`llm-wizard notify-test SPEC`: send a test message to every URL of the spec's [notify] table, now."""

from __future__ import annotations

import argparse

HELP = "send a test notification to the spec's notify.urls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a run spec (TOML) with [notify] urls, or a run's folder or id")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting first (repeatable), e.g. --set 'notify.urls=[\"ntfy://topic\"]'")
    parser.add_argument("--json", action="store_true", help='print {"sent": {url: null or the error}}')


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine import spec as spec_mod
    from engine.errors import UserError
    from engine.paths import runs_dir
    from engine.runfolder.folder import SPEC, resolve_run
    from engine.track import notify
    from tui.output import out, print_json

    path = Path(args.spec).expanduser()
    if not path.is_file():  # a run: its spec.toml
        path = resolve_run(args.spec, runs_dir(getattr(args, "runs_dir", None))) / SPEC
    spec = spec_mod.load(path, args.set)
    if not spec.notify.urls:
        raise UserError(f"{path}: no [notify] urls to test; add e.g. urls = [\"ntfy://my-topic\"]", field="notify.urls")
    run_id = path.parent.name if path.name == SPEC and (path.parent / "events.jsonl").exists() else spec.name
    message = notify.Message("test", f"llm-wizard: test from {run_id}",
                             f"a test notification: llm-wizard will tell you here when {run_id} ends, fails or "
                             f"pauses itself\nllm-wizard attach {run_id}", run_id, "test", None, None,
                             f"llm-wizard attach {run_id}")
    sent = notify.send(spec.notify.urls, message)
    if args.json:
        print_json({"sent": sent})
    else:
        for where, error in sent.items():
            out().print(f"[green]sent[/] to {where}" if error is None else f"[red]not sent[/] to {where}: {error}",
                        highlight=False)
    return 0 if all(error is None for error in sent.values()) else 1
