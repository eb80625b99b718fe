"""`llm-wizard lr-find`: a learning-rate range test; the loss-vs-LR curve and a suggested LR (--write sets it)."""

from __future__ import annotations

import argparse

HELP = "learning-rate range test: the loss against a rising LR, and a suggested train.lr (--write sets it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the run spec (TOML), e.g. presets/tiny.toml")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of the test (default 200)")
    parser.add_argument("--min-lr", type=float, default=1e-6, help="the LR of the first step (default 1e-6)")
    parser.add_argument("--max-lr", type=float, default=1.0, help="the LR of the last step (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec setting for the test (repeatable)")
    parser.add_argument("--write", action="store_true", help="set train.lr in SPEC to the suggestion (in place)")
    parser.add_argument("--png", metavar="FILE", help="also save the curve as a PNG (needs matplotlib)")
    parser.add_argument("--json", action="store_true",
                        help='print {"suggestion", "method", "steepest", "min_loss_lr", "ended", "lrs", "losses", '
                             '"smoothed"}')


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine import spec as spec_mod
    from engine.sweep.lr_find import lr_find, write_lr
    from tui.output import err, out, print_json

    spec = spec_mod.load(args.spec, args.overrides)
    if spec.distributed.num_processes > 1:
        err().print("note: the range test runs in one process; the LR it suggests is for the spec's per-process "
                    "batch", style="yellow")
    last = [0.0]

    def progress(step: int, lr: float, loss: float) -> None:
        import time

        if not args.json and (time.monotonic() - last[0] > 2 or step == args.steps):
            last[0] = time.monotonic()
            err().print(f"[dim]step {step}/{args.steps}  lr {lr:.3g}  loss {loss:.4f}[/]")

    result = lr_find(spec, steps=args.steps, min_lr=args.min_lr, max_lr=args.max_lr, progress=progress)
    if args.write:
        write_lr(Path(args.spec), result.suggestion)
    if args.png:
        save_png(result, Path(args.png))
    if args.json:
        print_json(result.to_dict())
        return 0
    from tui.widgets.overlay import Overlay, Series, render_overlay
    from rich.text import Text

    chart = Overlay([Series("loss", list(zip(result.lrs, result.losses)), "#5f87af"),
                     Series("smoothed", list(zip(result.lrs, result.smoothed)), "cyan")],
                    x_label="lr", log_x=True, marker=result.suggestion)
    width = min(out().width, 100)
    out().print(Text("\n").join(render_overlay(chart, width - 1, 16)))
    out().print(f"ended: {result.ended}", markup=False, soft_wrap=True)
    out().print(f"suggested train.lr = [bold]{result.suggestion:.3g}[/] ({result.method}; the lowest loss at "
                f"{result.min_loss_lr:.3g}, the steepest descent at {result.steepest:.3g}; "
                f"the spec has {spec.train.lr:.3g})", soft_wrap=True)
    if args.write:
        out().print(f"wrote train.lr = {result.suggestion:.3g} to {args.spec}", markup=False)
    else:
        out().print(f"set it with: llm-wizard lr-find {args.spec} --write  (or --set train.lr={result.suggestion:.3g})",
                    markup=False, soft_wrap=True)
    if args.png:
        out().print(f"curve saved to {args.png}", markup=False)
    return 0 if result.lrs else 1


def save_png(result: object, path: object) -> None:
    from engine.errors import UserError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--png needs matplotlib (pip install matplotlib); the chart above is the same curve",
                        field="png") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.losses, alpha=0.4, label="loss")  # type: ignore[attr-defined]
    ax.plot(result.lrs, result.smoothed, label="smoothed")  # type: ignore[attr-defined]
    ax.axvline(result.suggestion, linestyle="--", color="grey", label="suggestion")  # type: ignore[attr-defined]
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
