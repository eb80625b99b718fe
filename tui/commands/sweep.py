"""`llm-wizard sweep`: hyperparameter search with Optuna, each trial an ordinary run in the sweep's folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "hyperparameter search with Optuna: each trial an ordinary run, pruned from its eval loss"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="the run spec every trial starts from, e.g. presets/tiny.toml")
    parser.add_argument("--trials", type=int, default=20, help="how many trials to finish (default 20)")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                        help="a searched setting: train.lr=log(1e-5,1e-3), model.dropout=uniform(0,0.2), "
                             "train.warmup_steps=int(0,100), options.lora_rank=choice(8,16,32) (repeatable)")
    parser.add_argument("--metric", default="eval/loss", help="what to minimise: eval/loss (default), eval/ppl, "
                                                              "train/loss")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of each trial (train.max_steps)")
    parser.add_argument("--pruner", default="median", help="median (default), hyperband or none")
    parser.add_argument("--parallel", type=int, default=None,
                        help="trials at a time (default: one per GPU, one on the CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec setting for every trial (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="check the space and say what the sweep costs; "
                                                               "start nothing")
    parser.add_argument("--foreground", action="store_true", help="drive the sweep in this terminal (Ctrl-C "
                                                                  "stops it; resumable)")
    parser.add_argument("--resume", metavar="SWEEP", help="continue a stopped or killed sweep")
    parser.add_argument("--show", metavar="SWEEP", help="the sweep's trials: the live view on a terminal, else a "
                                                        "table ('latest' = the newest sweep)")
    parser.add_argument("--stop", metavar="SWEEP", help="stop a running sweep (its running trials save first)")
    parser.add_argument("--text", action="store_true", help="with --show: print the table instead of the view")
    parser.add_argument("--json", action="store_true", help="print the sweep (sweep.json and the best trial)")
    parser.add_argument("--step-sleep", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: fixed step time


def resolve(ref: str, root: Path) -> Path:
    """A sweep by folder, id, unique part of its id, or `latest`."""
    from engine.errors import UserError
    from engine.sweep import state

    p = Path(ref).expanduser()
    if state.is_sweep(p):
        return p.resolve()
    sweeps = [f for f, _ in state.list_sweeps(root)]
    if ref in ("latest", "last") and sweeps:
        return sweeps[-1]
    found = [f for f in sweeps if f.name == ref] or [f for f in sweeps if ref in f.name]
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"sweep {ref!r} is ambiguous: {', '.join(f.name for f in found[:5])}", field="sweep")
    raise UserError(f"no sweep {ref!r} in {root} (see `llm-wizard runs`)", field="sweep")


def run(args: argparse.Namespace) -> int:
    import os
    import signal

    from engine import spec as spec_mod
    from engine.errors import UserError
    from engine.paths import runs_dir
    from engine.sweep import driver, plan, state
    from tui.output import err, out, print_json

    root = runs_dir(getattr(args, "runs_dir", None))
    if args.show or args.stop:
        folder = resolve(args.show or args.stop, root)
        if args.stop:
            st = state.read(folder)
            if st is None or not st.live:
                raise UserError(f"sweep {folder.name} is not running", field="sweep")
            os.kill(st.pid, signal.SIGTERM)  # type: ignore[arg-type]
            out().print(f"stopping sweep {folder.name}: its running trials save a checkpoint and stop")
            return 0
        if args.json:
            print_json(plan.summary(folder))
            return 0
        if not args.text and sys.stdout.isatty():
            from tui.app import make_app

            return int(make_app(runs_dir=str(root), sweep=str(folder)).run() or 0)
        show_table(folder)
        return 0
    if args.resume:
        if args.spec or args.space:
            raise UserError("--resume takes the sweep's own settings; leave out SPEC and --space", field="resume")
        folder = resolve(args.resume, root)
        st = state.read(folder)
        if st is not None and st.live:
            raise UserError(f"sweep {folder.name} is still running (process {st.pid})", field="resume")
    else:
        if not args.spec:
            raise UserError("give a spec file (see presets/), or --resume SWEEP, or --show SWEEP", field="spec")
        spec = spec_mod.load(args.spec, args.overrides)
        if args.dry_run:
            return dry_run(spec, args, root)
        folder = plan.create(spec, args.space, runs_dir=Path(spec.runs_dir or root), trials=args.trials,
                             metric=args.metric, steps=args.steps, pruner=args.pruner, parallel=args.parallel,
                             step_sleep=args.step_sleep)
        if not args.json:
            out().print(f"sweep [bold]{folder.name}[/]: {plan.cost(folder, root).describe()}", soft_wrap=True)
    if args.foreground:
        out().print(f"sweep folder: {folder}")
        return driver.drive(folder, echo=lambda line: out().print(line, markup=False, soft_wrap=True))
    pid = driver.launch(folder)
    if (problem := driver.wait_started(folder, pid)) is not None:
        raise UserError(f"the sweep did not start: {problem.removeprefix('error: ')}", field="sweep")
    if args.json:
        print_json({"id": folder.name, "path": str(folder), "pid": pid})
    else:
        err().print(f"started sweep [bold]{folder.name}[/] (pid {pid})\n  folder: {folder}\n"
                    f"  watch:  llm-wizard sweep --show {folder.name}\n"
                    f"  stop:   llm-wizard sweep --stop {folder.name} (resume with --resume)\n"
                    f"  study:  optuna-dashboard sqlite:///{folder / state.STUDY_FILE}")
    return 0


def dry_run(spec: object, args: argparse.Namespace, root: Path) -> int:
    from engine.estimate.request import request_from_spec
    from engine.estimate.sweep_cost import sweep_cost
    from engine.sweep import plan, space
    from tui.output import out, print_json

    base = plan.base_spec(spec, args.steps, args.metric)  # type: ignore[arg-type]
    params = space.parse_space(args.space, base.to_dict())
    seconds, start, source = plan.measured_step_seconds(base, root)
    slots = len(plan.gpu_slots(base)) or 1
    cost = sweep_cost(args.trials, base.train.max_steps, request_from_spec(base).tokens_per_step(),
                      parallel=args.parallel or slots, step_seconds=seconds, source=source, start_seconds=start)
    if args.json:
        print_json({"space": [p.text() for p in params], "cost": cost.to_dict()})
        return 0
    out().print("space: " + "; ".join(p.text() for p in params), markup=False, soft_wrap=True)
    out().print(f"cost: {cost.describe()}", markup=False, soft_wrap=True)
    return 0


def show_table(folder: Path) -> None:
    from rich.table import Table

    from engine.sweep import plan, state
    from tui.output import out

    st = state.read(folder)
    assert st is not None
    keys = [t.split("=", 1)[0] for t in st.space]
    table = Table(title=f"sweep {folder.name}: {st.state}, {len(st.counted())}/{st.trials} trials",
                  title_justify="left")
    for col in ("#", "state", *keys, st.metric, "best", "pruned at", "run"):
        table.add_column(col, justify="right" if col not in ("state", "run") else "left", no_wrap=col == "run")
    for r in st.records:
        table.add_row(str(r.number), r.state + ("" if r.counted else " (not counted)"),
                      *[_fmt(r.params.get(k)) for k in keys], _fmt(r.value), _fmt(r.best),
                      "" if r.pruned_at is None else str(r.pruned_at), r.run)
    out().print(table)
    best = st.best()
    if best is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        out().print(f"best: trial {best.number}, {st.metric} {best.value:.4f} ({params}); run {best.run}",
                    markup=False, soft_wrap=True)
    out().print(f"cost: {plan.cost(folder).describe()}", markup=False, soft_wrap=True)


def _fmt(v: object) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sweeps_table(root: Path) -> object | None:
    """The sweeps in `root` as a Rich table for `llm-wizard runs` (None when there are none)."""
    from rich.table import Table

    from engine.sweep import state

    found = state.list_sweeps(root)
    if not found:
        return None
    colours = {"running": "green", "done": "blue", "failed": "red", "crashed": "red", "stopped": "yellow"}
    table = Table(title=f"sweeps in {root}", title_justify="left")
    for col in ("id", "state", "trials", "metric", "best"):
        table.add_column(col, justify="right" if col in ("trials", "best") else "left", no_wrap=col == "id")
    for folder, st in found:
        best = st.best()
        c = colours.get(st.state, "white")
        table.add_row(folder.name, f"[{c}]{st.state}[/]", f"{len(st.counted())}/{st.trials}", st.metric,
                      "" if best is None else f"{best.value:.4f}")
    return table
