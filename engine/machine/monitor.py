"""Live readings of this machine's GPUs for the dashboard, every couple of seconds.

`hardware.probe_gpus` opens and closes NVML on each call, which suits a one-off report; a monitor
polled for hours keeps NVML open and the device handles, names and power limits it has read once,
so each reading is only memory, utilisation, temperature and power. Called from one thread (the
dashboard's GPU worker), never from the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.machine.probe import GpuInfo, _text, _try, load_nvml


@dataclass(frozen=True)
class _Board:
    index: int
    handle: Any
    name: str
    uuid: str
    power_limit_w: float | None


class GpuMonitor:
    """`read()` -> the GPUs now (empty on a machine without an NVIDIA driver); `close()` when done."""

    def __init__(self, nvml: Any | None = None) -> None:
        self.status = "ok"  # "ok", "no-driver", or what NVML said
        self._nvml: Any | None = None
        self._boards: list[_Board] = []
        try:
            nvml = nvml if nvml is not None else load_nvml()
            nvml.nvmlInit()
        except ImportError:
            self.status = "no-driver"
            return
        except Exception as err:  # NVMLError_LibraryNotFound / DriverNotLoaded: a CPU-only machine
            name = type(err).__name__
            missing = "LibraryNotFound" in name or "DriverNotLoaded" in name or "NotFound" in str(err)
            self.status = "no-driver" if missing else f"NVML failed: {err}"
            return
        self._nvml = nvml
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                limit = _try(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
                self._boards.append(_Board(i, h, _text(nvml.nvmlDeviceGetName(h)),
                                           _text(_try(nvml.nvmlDeviceGetUUID, h) or ""),
                                           limit / 1000 if limit is not None else None))
        except Exception as err:  # a board that fails at start-up: report it, read none
            self.status = f"NVML failed: {err}"
            self.close()

    @property
    def active(self) -> bool:
        """False where polling again cannot show anything new (no driver, no GPU)."""
        return self._nvml is not None and bool(self._boards)

    def read(self) -> list[GpuInfo]:
        nvml = self._nvml
        if nvml is None:
            return []
        out = []
        for b in self._boards:
            mem = nvml.nvmlDeviceGetMemoryInfo(b.handle)
            util = _try(nvml.nvmlDeviceGetUtilizationRates, b.handle)
            power = _try(nvml.nvmlDeviceGetPowerUsage, b.handle)
            out.append(GpuInfo(
                index=b.index, name=b.name, uuid=b.uuid, memory_total_bytes=int(mem.total),
                memory_used_bytes=int(mem.used), memory_free_bytes=int(mem.free),
                utilization_pct=util.gpu if util is not None else None,
                temperature_c=_try(nvml.nvmlDeviceGetTemperature, b.handle, nvml.NVML_TEMPERATURE_GPU),
                power_w=power / 1000 if power is not None else None, power_limit_w=b.power_limit_w,
            ))
        return out

    def close(self) -> None:
        if self._nvml is not None:
            _try(self._nvml.nvmlShutdown)
            self._nvml = None
