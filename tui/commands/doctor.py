"""`llm-wizard doctor`: the GPUs, the software stack and what to fix, before any GPU-hour is spent."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from tui.output import human_bytes, out, print_json

HELP = "hardware and environment report (GPUs, PyTorch build, libraries, disk, the Hub)"

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--import-torch", action="store_true",
                        help="import torch even for a CPU build (slower; checks that it loads)")


def run(args: argparse.Namespace) -> int:
    from engine.machine.probe import probe

    from dataclasses import asdict

    from engine.hub.connection import status

    report = probe(import_torch=True if args.import_torch else None, runs=getattr(args, "runs_dir", None))
    from engine.serve.llama_cpp import locate

    hub = status()  # here, not in probe(): the wizard's first screen never waits on the network
    llama = locate()  # GGUF export's tools (engine/serve/llama_cpp.py)
    if args.json:
        print_json({**report.to_dict(), "hub": asdict(hub), "llama_cpp": llama.to_dict()})
        return 0
    render(report, llama.describe())
    render_hub(hub)
    return 0


def render_hub(hub) -> None:  # noqa: ANN001 (engine.hub.connection.HubStatus)
    """The Hub: reachable or why not, a token set or not (never shown), the cache, fast transfer."""
    grid = Table.grid(padding=(0, 2))
    grid.add_row("hub", Text(f"{hub.endpoint}: reachable", style="green") if hub.online else
                 Text(f"offline: {hub.offline_reason}", style="yellow"))
    grid.add_row("token", f"set ({'HF_TOKEN' if hub.token_from == 'HF_TOKEN' else 'hf auth login'})" if hub.token_set
                 else Text("not set: gated and private models need one (hf auth login, or HF_TOKEN)", style="yellow"))
    grid.add_row("hub cache", f"{hub.cache_dir} ({human_bytes(hub.cache_bytes)})")
    fast = ", ".join(f"{name} {v}" for name, v in (("hf_xet", hub.hf_xet), ("hf_transfer", hub.hf_transfer)) if v)
    grid.add_row("fast transfer", fast or Text("neither hf_xet nor hf_transfer installed (pip install hf_xet)",
                                              style="yellow"))
    out().print()
    out().print(grid)


def gpu_table(report) -> Table:  # noqa: ANN001 (HardwareReport; engine types stay out of the signature import)
    table = Table(title=f"GPUs (driver {report.driver_version or '-'}, CUDA {report.cuda_driver_version or '-'})",
                  title_justify="left")
    for col in ("#", "name", "memory used / total", "free", "util", "temp", "power"):
        table.add_column(col, justify="right" if col not in ("name",) else "left")
    for g in report.gpus:
        table.add_row(
            str(g.index), g.name,
            f"{human_bytes(g.memory_used_bytes)} / {human_bytes(g.memory_total_bytes)}",
            human_bytes(g.memory_free_bytes),
            "-" if g.utilization_pct is None else f"{g.utilization_pct}%",
            "-" if g.temperature_c is None else f"{g.temperature_c} C",
            "-" if g.power_w is None else f"{g.power_w:.0f}/{g.power_limit_w or 0:.0f} W",
        )
    return table


def render(report, llama_cpp: str = "") -> None:  # noqa: ANN001
    console = out()
    if report.gpus:
        console.print(gpu_table(report))
    else:
        console.print(Text("GPUs: none (CPU only)", style="bold"))
    t = report.torch
    if not t.installed:
        torch_line = "not installed"
    else:
        avail = {True: "yes", False: "no", None: "not checked"}[t.cuda_available]
        torch_line = (f"{t.version}, built for CUDA {t.cuda or '- (CPU build)'}, cuda available: {avail}"
                      + (f", {t.device_count} device(s)" if t.device_count else "")
                      + (", MPS available" if t.mps_available else ""))
    stack = Table.grid(padding=(0, 2))
    stack.add_row("python", report.python)
    stack.add_row("platform", report.platform)
    stack.add_row("torch", torch_line)
    for name, version in report.packages.items():
        stack.add_row(name, version or Text("not installed", style="yellow"))
    stack.add_row("nvcc", f"CUDA {report.nvcc_cuda}" if report.nvcc_cuda else "not on PATH")
    if llama_cpp:
        stack.add_row("llama.cpp", llama_cpp)
    stack.add_row("runs", f"{report.runs_dir} ({human_bytes(report.disk_free_bytes)} free)")
    console.print()
    console.print(stack)
    console.print()
    if not report.problems:
        console.print(Text("No problems found.", style="green"))
    problems = Table.grid(padding=(0, 1))
    problems.add_column(no_wrap=True)
    problems.add_column()
    for p in report.problems:
        problems.add_row(Text(p.severity, style=SEVERITY_STYLE.get(p.severity, "")),
                         Text.assemble(p.message, "\n", (f"fix: {p.fix}", "dim")))
    console.print(problems)
