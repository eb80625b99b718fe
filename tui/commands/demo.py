"""`llm-wizard demo`: train a tiny model from scratch on Python's own source, shown live (offline, CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train a tiny model from scratch on Python's own source, shown live (offline, CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of presets/demo.toml, e.g. --set train.max_steps=200")
    parser.add_argument("--no-ui", action="store_true", help="start the run and print its id instead of the dashboard")
    parser.add_argument("--json", action="store_true", help='with --no-ui: print {"id", "path", "pid"}')


def demo_spec_path() -> Path:
    import presets

    return Path(presets.__file__).parent / "demo.toml"


def run(args: argparse.Namespace) -> int:
    from engine.run import job
    from engine import spec as spec_mod
    from engine.paths import runs_dir
    from tui.output import out, print_json

    runs = getattr(args, "runs_dir", None)
    spec = spec_mod.load(demo_spec_path(), args.overrides)
    run_path = job.create(spec, runs_dir(runs or spec.runs_dir or None))
    pid = job.launch(run_path)
    if args.no_ui:
        if args.json:
            print_json({"id": run_path.name, "path": str(run_path), "pid": pid})
        else:
            out().print(f"started demo run [bold]{run_path.name}[/] (pid {pid}): llm-wizard attach {run_path.name}")
        return 0
    from tui.app import make_app

    return int(make_app(runs_dir=runs, attach=str(run_path)).run() or 0)
