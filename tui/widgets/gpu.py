"""One GPU as the hardware screen and the dashboard show it: name, memory bar, utilisation,
temperature and power."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label

from tui.output import human_bytes
from tui.widgets.bars import UsageBar

if TYPE_CHECKING:
    from engine.machine.probe import GpuInfo


def gpu_stats(gpu: GpuInfo) -> str:
    parts = [f"util {gpu.utilization_pct}%" if gpu.utilization_pct is not None else "util -"]
    parts.append(f"{gpu.temperature_c} °C" if gpu.temperature_c is not None else "- °C")
    if gpu.power_w is not None:
        limit = f"/{gpu.power_limit_w:.0f}" if gpu.power_limit_w else ""
        parts.append(f"{gpu.power_w:.0f}{limit} W")
    return "  ".join(parts)


def memory_text(used: int, total: int) -> str:
    return f"{human_bytes(used)} / {human_bytes(total)}"


class GpuCard(Vertical):
    """Two lines: `GPU i name  [memory bar]  used/total`, then free memory and the live readings."""

    def __init__(self, gpu: GpuInfo) -> None:
        super().__init__(classes="gpu-card")
        self.gpu = gpu

    def compose(self) -> ComposeResult:
        g = self.gpu
        with Horizontal(classes="gpu-line"):
            yield Label(f"GPU {g.index}  {g.name}", classes="gpu-name")
            yield UsageBar(g.memory_used_bytes, g.memory_total_bytes, classes="gpu-bar")
            yield Label(memory_text(g.memory_used_bytes, g.memory_total_bytes), classes="gpu-mem")
        with Horizontal(classes="gpu-line"):
            yield Label("", classes="gpu-name")
            yield Label(f"{human_bytes(g.memory_free_bytes)} free", classes="gpu-free")
            yield Label(gpu_stats(g), classes="gpu-stats")

    def update_gpu(self, gpu: GpuInfo) -> None:
        """New readings for the same board (the dashboard polls NVML)."""
        self.gpu = gpu
        self.query_one(UsageBar).update(gpu.memory_used_bytes, gpu.memory_total_bytes)
        self.query_one(".gpu-mem", Label).update(memory_text(gpu.memory_used_bytes, gpu.memory_total_bytes))
        self.query_one(".gpu-free", Label).update(f"{human_bytes(gpu.memory_free_bytes)} free")
        self.query_one(".gpu-stats", Label).update(gpu_stats(gpu))
