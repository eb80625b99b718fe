"""`llm-wizard estimate`: memory and data-size checks for a model, technique and options."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rich.table import Table
from rich.text import Text

from tui.output import human_bytes, out, print_json

HELP = "memory and data-size checks for a model, technique and options"

VERDICT_STYLE = {"fits": "green", "tight": "yellow", "no": "bold red", "enough": "green", "short": "yellow",
                 "too little": "bold red"}


def _size_arg(text: str) -> int:
    """'24GiB', '80GB', '16G', '512MiB' or a number of bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 24GiB or 80GB)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = " KMGT".index(unit) if unit else 0
    return int(value * ((1024 if binary or not unit else 1000) ** power))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engine import vocabulary  # light: no torch

    def listed(values: tuple[vocabulary.Name, ...]) -> str:
        """The names, those the run engine does not train marked: the run spec's vocabulary."""
        return " | ".join(v.name + ("" if v.trains else " (estimate only)") for v in values)

    m = parser.add_argument_group("model")
    m.add_argument("--model", metavar="ID_OR_PATH", help="a folder with config.json, or a Hub id (config.json from the Hub cache, else the Hub)")
    m.add_argument("--arch", choices=vocabulary.names(vocabulary.ARCHS), help="scratch: the architecture")
    m.add_argument("--size", help=f"scratch: {' | '.join(vocabulary.SIZES)}")
    m.add_argument("--layers", type=int, help="scratch: override the size's layer count")
    m.add_argument("--width", type=int, help="scratch: override the hidden width")
    m.add_argument("--heads", type=int, help="scratch: override the attention heads")
    m.add_argument("--vocab-size", type=int, help="scratch: the tokenizer's vocabulary (default 32000)")
    t = parser.add_argument_group("technique")
    t.add_argument("--technique", default="full", help=f"{listed(vocabulary.TECHNIQUES)} (default full)")
    t.add_argument("--teacher", metavar="ID_OR_PATH", help="distillation: the teacher model")
    t.add_argument("--lora-rank", type=int, default=8)
    t.add_argument("--lora-targets", help="comma-separated module names (default: peft's for the family)")
    t.add_argument("--num-virtual-tokens", type=int, default=20, help="prompt tuning")
    o = parser.add_argument_group("options")
    o.add_argument("--precision", default="bf16", help=f"{listed(vocabulary.PRECISIONS)} (default bf16: the run "
                   "spec's mixed precision over fp32 weights)")
    o.add_argument("--optimizer", default="adamw", help=f"{listed(vocabulary.OPTIMIZERS)} (default adamw)")
    o.add_argument("--batch-size", type=int, default=8, help="micro-batch per GPU (default 8)")
    o.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    o.add_argument("--grad-checkpointing", action="store_true")
    o.add_argument("--attention", choices=("sdpa", "eager"),
                   help="attention implementation (default: the model config's; transformers uses sdpa)")
    o.add_argument("--gpus", type=int, help="number of GPUs (default: those found)")
    o.add_argument("--strategy", default="ddp", help=f"{listed(vocabulary.STRATEGIES)} (default ddp)")
    o.add_argument("--gpu-memory", type=_size_arg, metavar="SIZE",
                   help="assume GPUs with this much free memory (e.g. 24GiB) instead of probing")
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", metavar="PATH_OR_ID", help=".txt, folder of text files, .jsonl, .csv, .parquet, a Slack "
                   "export, or a Hub dataset id in the local cache")
    d.add_argument("--text-column", help="the column with the text (.jsonl/.csv/.parquet)")
    d.add_argument("--format", choices=vocabulary.DATA_FORMATS, help="the examples' layout (default auto: detected)")
    d.add_argument("--template", help=f"chat template: {' | '.join(vocabulary.CHAT_TEMPLATES)}, or text with "
                   "{prompt} and {response} (default auto: the model's own)")
    d.add_argument("--train-on", choices=vocabulary.TRAIN_ON, help="which tokens carry the loss (default assistant)")
    d.add_argument("--messages-column", help="the column holding a conversation")
    d.add_argument("--prompt-column", help="the prompt column (with --response-column)")
    d.add_argument("--response-column", help="the response column (with --prompt-column)")
    d.add_argument("--system-column", help="a system prompt column for prompt/response rows")
    d.add_argument("--slack-user", help="Slack export: whose replies are learned")
    d.add_argument("--max-steps", type=int, help="planned optimizer steps, for the projected epochs")
    parser.add_argument("--spec", metavar="SPEC", help="take the model, technique, options, seq_len and data from "
                        "a run spec (TOML); --dataset and the data options above override its data")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --spec: override a spec setting (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# The data options above: their names in the run spec's data section (engine.data.sources.DataSource).
DATA_OPTIONS = ("format", "template", "train_on", "messages_column", "prompt_column", "response_column",
                "system_column", "slack_user")


def _data_options(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in DATA_OPTIONS if getattr(args, k, None)}


def request_from_args(args: argparse.Namespace):  # noqa: ANN201 (engine type, imported lazily)
    from engine.errors import UserError
    from engine.estimate.memory import EstimateRequest

    if getattr(args, "spec", None):
        return _request_from_spec(args)
    if getattr(args, "overrides", None):
        raise UserError("--set changes a spec's settings: give the spec with --spec", field="set")
    if bool(args.prompt_column) != bool(args.response_column):
        raise UserError("give --prompt-column and --response-column together", field="prompt_column")
    targets = tuple(x.strip() for x in (args.lora_targets or "").split(",") if x.strip())
    return EstimateRequest(
        model=args.model, arch=args.arch, size=args.size, layers=args.layers, width=args.width, heads=args.heads,
        vocab_size=args.vocab_size, technique=args.technique, teacher=args.teacher, lora_rank=args.lora_rank,
        lora_targets=targets, num_virtual_tokens=args.num_virtual_tokens, precision=args.precision,
        optimizer=args.optimizer, batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum,
        grad_checkpointing=args.grad_checkpointing, attention=args.attention, gpus=args.gpus, strategy=args.strategy,
        dataset=args.dataset, text_column=args.text_column, max_steps=args.max_steps,
        data_options=tuple(_data_options(args).items()),
    )


def _request_from_spec(args: argparse.Namespace):  # noqa: ANN202 (engine type, imported lazily)
    """The run's own request (engine.estimate.request.request_from_spec) with its data settings; a --dataset or
    data option given here is applied to the spec's data section first, so the spec's checks see it."""
    from engine.estimate.request import data_options, request_from_spec
    from engine.spec import load

    given = _data_options(args) | ({"text_column": args.text_column} if args.text_column else {})
    if args.dataset:  # a path given here is the shell's, not relative to the spec's folder
        local = Path(args.dataset).expanduser()
        given["path"] = str(local.resolve()) if local.exists() else args.dataset
    # JSON strings are TOML strings: a value is taken as written, never parsed as a number or a table
    overrides = [*args.overrides, *(f"data.{k}={json.dumps(v)}" for k, v in given.items())]
    spec = load(args.spec, overrides)
    return request_from_spec(spec, dataset=spec.data.path, text_column=spec.data.text_column or None,
                             data_options=data_options(spec.data), tokenizer=spec.tokenizer.path or None,
                             max_steps=args.max_steps or spec.train.max_steps or None,
                             **({"gpus": args.gpus} if args.gpus else {}))


def run(args: argparse.Namespace) -> int:
    from engine.estimate.memory import estimate, probe_gpus

    req = request_from_args(args)
    if args.gpu_memory:
        gpus = [(i, "assumed", args.gpu_memory) for i in range(req.gpus or 1)]
    else:
        gpus = probe_gpus(req)
    def note(text: str) -> None:  # the first estimate of an architecture measures a reduced copy (seconds)
        if not args.json:
            out().print(f"[dim]{text}...[/]")

    if args.json or not req.dataset:
        result = estimate(req, gpus=gpus, note=note)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        with Progress("counting tokens", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      console=out(), transient=True) as bar:
            task = bar.add_task("tokens", total=None)
            result = estimate(req, gpus=gpus, note=note,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        print_json(result.to_dict())
    else:
        render(result)
    return 0


def _b(n: int) -> str:
    return human_bytes(n)


def _how(source: str) -> str:
    """'measured' or 'formula', the first word of the estimate's source of a part."""
    return source.split(" ", 1)[0]


def render(e) -> None:  # noqa: ANN001 (engine.estimate.memory.Estimate)
    from engine.estimate.suggest import TABLE_5_2

    c = out()
    m = e.model
    c.print(Text(f"{m.model_type} ({m.source}): {m.params / 1e6:,.1f}M parameters, "
                 f"{m.trainable_params / 1e6:,.2f}M trainable", style="bold"))
    c.print(f"Rule of thumb: {_b(e.rule_of_thumb.bytes)}: {e.rule_of_thumb.rule} [dim]({e.rule_of_thumb.label})[/]")
    b = e.breakdown
    table = Table(title="Estimate (one training step)", title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    dtypes = ", ".join(f"{k} {_b(v)}" for k, v in b.weights_by_dtype.items())
    rows = [("weights", b.weights, dtypes), ("gradients (trainable)", b.gradients, ""),
            ("optimizer states", b.optimizer_states, ""), ("autocast 16-bit weight copies", b.autocast_copies, ""),
            ("activations kept for backward", b.activations, _how(e.sources.get("activations", ""))),
            ("logits and loss (peak moment)", b.logits_and_loss, _how(e.sources.get("logits_and_loss", ""))),
            ("optimizer step temporaries", b.optimizer_step_temp, ""), ("teacher", b.teacher, ""),
            ("token ids and labels", b.inputs, "")]
    table.add_column(style="dim")
    for name, value, extra in rows:
        if value:
            table.add_row(name, _b(value), extra)
    for ph in e.phases:
        mark = " <- peak" if ph.name == e.peak_phase else ""
        table.add_row(Text(f"{ph.name} phase total", style="bold" if mark else ""), _b(ph.bytes), mark.strip())
    if e.gpu_count > 1:
        strategy = e.request.get("strategy", "ddp")
        table.add_row(f"across {e.gpu_count} GPUs ({strategy})", "", "per GPU below")
    table.add_row(Text("peak (max_memory_allocated)", style="bold"), _b(e.peak_bytes), "")
    table.add_row("+ fragmentation margin", _b(e.margins["fragmentation"]), "")
    table.add_row("+ CUDA context", _b(e.margins["cuda_context"]), "")
    table.add_row(Text("total (as nvidia-smi shows)", style="bold"), _b(e.total_bytes), "")
    c.print(table)
    if e.gpus:
        for g in e.gpus:
            c.print(Text.assemble(f"GPU {g.index} {g.name}: {_b(g.free_bytes)} free, needs {_b(g.needed_bytes)}: ",
                                  (g.verdict, VERDICT_STYLE[g.verdict])))
    else:
        c.print("No GPU found: pass --gpu-memory 24GiB (or --gpus N on a GPU machine) for a verdict.")
    if e.suggestions:
        s = Table(title="What would make it fit (ranked by memory saved; trade-offs from table 5.2)",
                  title_justify="left")
        for col in ("change", "flags", "new total", "verdict", "table 5.2", "faster?", "difficulty"):
            s.add_column(col, justify="right" if col == "new total" else "left")
        for x in e.suggestions:
            s.add_row(x.change, x.flags, _b(x.total_bytes), Text(x.verdict, VERDICT_STYLE[x.verdict]),
                      x.trade_off, x.speed, x.difficulty)
        c.print(s)
        t = Table(title="Table 5.2: training choices", title_justify="left")
        for col in ("choice", "faster?", "saves memory?", "difficulty", "note"):
            t.add_column(col)
        for r in TABLE_5_2:
            t.add_row(r.choice, r.speed, r.memory, r.difficulty, r.note)
        c.print(t)
    if e.data is not None:
        _render_data(e.data)
    for note in e.notes:
        c.print(f"[dim]note: {note}[/]")


def _render_data(d) -> None:  # noqa: ANN001 (engine.estimate.data_size.DataCheck)
    c = out()
    err = f" +/- {d.tokens_error:,}" if d.tokens_error else ""
    c.print(Text.assemble("Data: ", (f"{d.tokens:,}{err} tokens", "bold"), f" ({d.method})"))
    c.print(f"  {d.tokens_per_param:.3g} tokens per parameter; needs {d.required_tokens:,}: {d.rule}")
    c.print(Text.assemble("  verdict: ", (d.verdict, VERDICT_STYLE.get(d.verdict, "")), f": {d.advice}"))
    line = f"  {d.tokens_per_step:,} tokens a step, {d.steps_per_epoch:,} steps an epoch"
    if d.projected_epochs is not None:
        line += f", {d.projected_epochs:.3g} epochs planned"
    c.print(line)
