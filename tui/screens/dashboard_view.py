"""What the dashboard draws from a run's history: the stats table, the MoE expert bars, the alert lines, and
the styles of run states and alert severities (tui/screens/runs.py shares them)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tui.output import human_bytes
from tui.screens.run_history import RunHistory
from tui.widgets.gpu_panel import LEVELS

MUTED = "#9e9e9e"
SEVERITY = {"error": ("✖", "bold red"), "warning": ("⚠", "yellow"), "info": ("i", "cyan")}
LIVE = ("starting", "running", "paused", "stopping", "stalled")
STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "starting": "cyan", "stopping": "yellow",
               "done": "bold blue", "stopped": "blue", "failed": "bold red", "crashed": "bold red",
               "stalled": "bold yellow", "damaged": "bold red"}
REMEDY_KEYS = {"rescue": ("x", "rescue"), "rollback": ("b", "roll back"), "set_lr": ("l", "lower the LR"),
               "pause": ("p", "resume after a look"), "stop": ("S", "stop")}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def stats_table(h: RunHistory) -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="#9e9e9e", no_wrap=True)
    t.add_column(no_wrap=True)
    total = f" / {h.total_steps:,}" if h.total_steps else ""
    t.add_row("step", f"{h.step:,}{total}")
    loss = "-" if h.loss is None else f"{h.loss:.4f}"
    t.add_row("loss", Text(loss, style="bold cyan"))
    if h.val_loss is not None:
        t.add_row("val loss", Text(f"{h.val_loss:.4f}", style="bold yellow"))
    t.add_row("lr", "-" if h.lr is None else f"{h.lr:.3g}")
    t.add_row("data seen", "-" if h.data_share is None else f"{h.data_share * 100:.1f}%")
    t.add_row("tokens/s", "-" if h.tok_per_s is None else f"{h.tok_per_s:,.0f}")
    t.add_row("step time", "-" if h.step_ms is None else f"{h.step_ms:,.0f} ms")
    if h.mfu is not None:
        t.add_row("MFU", f"{h.mfu * 100:.1f}%" if h.mfu <= 1 else f"{h.mfu:.1f}%")
    else:  # null in the metrics: no known peak (the CPU, or a GPU missing from the peak table)
        t.add_row("MFU", Text("unknown (CPU)" if h.on_cpu else "unknown" if h.metrics_seen else "-", style=MUTED))
    t.add_row("ETA", duration(h.eta_s) if h.state in LIVE else "-")
    if h.peak_mem is not None:
        t.add_row("peak mem", human_bytes(h.peak_mem))
    if h.expert_share:
        t.add_row("experts", expert_bars(h.expert_share))
    if h.preference is not None:  # preference tuning: the chosen answers' lead, and how often they lead
        margin, accuracy = h.preference
        t.add_row("reward margin", Text(f"{margin:+.3f}", style="green" if margin > 0 else "red"))
        t.add_row("pairs right", f"{accuracy * 100:.0f}%")
    return t


def expert_bars(shares: list[float], per_line: int = 16) -> Text:
    """An MoE run's routed-token share per expert, one level character each (full = the busiest expert),
    in expert order, then the range: `▆█▃▅ 18-34%`. Yellow: over twice the even share; red: under a
    quarter of it (an expert the router starves)."""
    n, top = len(shares), max(max(shares), 1e-9)
    text = Text()
    for i, s in enumerate(shares):
        if i and i % per_line == 0:
            text.append("\n")
        style = "yellow" if s > 2 / n else "red" if s < 0.25 / n else "cyan"
        text.append(LEVELS[min(max(round(s / top * 7), 0), 7)], style=style)
    lo, hi = min(shares) * 100, max(shares) * 100
    text.append("\n" if n > per_line else " ")
    text.append(f"{lo:.0f}-{hi:.0f}%" if round(lo) != round(hi) else f"{lo:.0f}% each", style=MUTED)
    return text


def alert_lines(h: RunHistory, count: int, live: bool) -> Group:
    """The newest `count` alerts, newest first, each with its step. The newest error-severity one
    stays on top while newer warnings arrive; the top one wraps and names its one-key remedy, the
    others take one line each."""
    recent = h.recent_alerts(count)
    errors = [a for a in reversed(h.alerts) if a.severity == "error"]
    if errors and errors[0] not in recent[:1]:
        recent = [errors[0], *[a for a in recent if a is not errors[0]]][:count]
    lines = []
    for i, a in enumerate(recent):
        mark, style = SEVERITY.get(a.severity, SEVERITY["warning"])
        text = Text.assemble((f"{mark} ", style), (f"step {a.step:,}  " if a.step is not None else "", MUTED),
                             (f"{a.kind}: ", f"bold {style}" if i == 0 else style),
                             (a.message, "" if i == 0 else MUTED))
        if i == 0:
            if live and a.suggest in REMEDY_KEYS:
                key, what = REMEDY_KEYS[a.suggest]
                text.append(f"  press {key} to {what}", style="bold reverse")
        else:
            text.no_wrap, text.overflow = True, "ellipsis"
        lines.append(text)
    return Group(*lines)
