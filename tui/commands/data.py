"""`llm-wizard data SPEC`: the data as the trainer will see it: format, counts, the first examples with their mask.

It runs the trainer's own data path (engine.data.prepare) with the tokenizer the run will use, so the
counts are the run's, and the token cache it builds is the one the run then opens.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "the data as the trainer will see it: format, counts, the first examples with their loss mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the run spec (TOML), e.g. a run's spec.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec setting, e.g. --set data.train_on=all (repeatable)")
    parser.add_argument("--show", type=int, default=3, metavar="N", help="examples shown as trained (default 3)")
    parser.add_argument("--json", action="store_true", help='print {"format", "examples", "tokens", '
                        '"trained_tokens", "truncated", "dropped", "shown", ...}')


def run_tokenizer(spec: Any, source: Any) -> tuple[Any, str]:
    """The tokenizer the run will use, and a note on where it came from. A fine-tune: the model's (or
    tokenizer.path). From scratch: the tokenizer the run trains on the data, on a table's examples as rendered
    (engine/techniques/scratch.py tokenizer_for: trained here once and cached, so the run opens the same one)."""
    if spec.technique != "scratch":
        from engine.models.pretrained import load_tokenizer

        path = spec.tokenizer.path or spec.model.path
        field = "tokenizer.path" if spec.tokenizer.path else "model.path"
        return load_tokenizer(path, field, spec.model), f"the tokenizer of {path}"
    from engine.techniques import scratch

    scratch.check_source(source)
    tokenizer = scratch.tokenizer_for(spec, source.files(), None if source.kind == "text" else source)
    if spec.tokenizer.path:
        return tokenizer, f"the tokenizer of {spec.tokenizer.path}"
    return tokenizer, (f"from scratch: the {spec.tokenizer.kind} tokenizer the run trains on this data (trained once "
                       "and cached)")


def run(args: argparse.Namespace) -> int:
    from engine.data.prepare import prepare, with_shown
    from engine.data.sources import DataSource
    from engine.errors import UserError
    from engine.spec import load
    from tui.output import err, print_json

    if args.show < 0:
        raise UserError("--show must be 0 or more", field="show")
    spec = load(args.spec, args.overrides)
    source = DataSource.from_spec(spec.data)
    console = err()
    if not args.json and console.is_terminal:
        console.print(f"[dim]loading the tokenizer ({spec.technique})…[/]")
    tokenizer, origin = run_tokenizer(spec, source)
    kwargs = dict(val_fraction=spec.data.val_fraction, seed=spec.seed)
    if console.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        with Progress("tokenizing", BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("data", total=None)
            prepared = prepare(source, tokenizer, spec.train.seq_len, **kwargs,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        prepared = prepare(source, tokenizer, spec.train.seq_len, **kwargs)
    report = with_shown(prepared, tokenizer, args.show)
    if args.json:
        print_json(report.to_json() | {"tokenizer": origin})
    else:
        render(report, origin, tokenizer)
    return 0


def render(report: Any, origin: str, tokenizer: Any) -> None:
    from rich.text import Text

    from tui.data_view import describe_examples, legend, report_rows
    from tui.output import out

    c = out()
    plain = not c.is_terminal
    for name, value in [*report_rows(report), ("tokenizer", origin)]:
        c.print(Text.assemble((f"{name:<16}", "bold"), value), soft_wrap=True)
    for warning in report.warnings:
        c.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    if report.shown:
        c.print()
        c.print(legend(plain))
        decode = lambda ids: tokenizer.decode(ids)  # noqa: E731 - a run of tokens reads whole
        for line in describe_examples(report.shown, plain=plain, decode=decode):
            c.print(line, soft_wrap=True)
