"""A stand-in for the `pynvml` module, at the level of the functions the hardware probe calls.

Used by tests, and by `LLM_WIZARD_FAKE_GPUS=<fixture>` so that the TUI, the CLI and end-to-end
tests can show a GPU machine on a machine without one. Fixtures: none (no driver), 0, 1, 2xL4,
8xH100, all idle; `<name>:busy` (1, 2xL4, 8xH100) is the same machine in the middle of a training run,
each board with its own memory, utilisation, temperature and power, as the dashboard shows them.
Numbers are those of the real boards (NVIDIA data sheets): L4 24 GB 72 W, H100 SXM 80 GB 700 W,
RTX 4090 24 GB 450 W.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 (pynvml's own name)
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


NVML_TEMPERATURE_GPU = 0


@dataclass
class FakeGpu:
    name: str
    memory_total: int
    memory_used: int
    utilization: int
    temperature: int
    power_mw: int
    power_limit_mw: int
    uuid: str = ""


@dataclass
class _Mem:
    total: int
    used: int
    free: int


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class FakeNvml:
    """Exposes pynvml's function names; `driver=None` behaves like a machine with no driver."""

    gpus: list[FakeGpu] = field(default_factory=list)
    driver: str | None = "550.54.15"
    cuda_driver: int = 12040  # what nvmlSystemGetCudaDriverVersion returns: 1000*major + 10*minor
    NVMLError: type = NVMLError
    NVML_TEMPERATURE_GPU: int = NVML_TEMPERATURE_GPU

    def nvmlInit(self) -> None:  # noqa: N802
        if self.driver is None:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self.driver or ""

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self.cuda_driver

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:  # noqa: N802
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:  # noqa: N802
        return h.uuid

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> _Mem:  # noqa: N802
        return _Mem(h.memory_total, h.memory_used, h.memory_total - h.memory_used)

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> _Util:  # noqa: N802
        return _Util(h.utilization, 0)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:  # noqa: N802
        return h.temperature

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:  # noqa: N802
        return h.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:  # noqa: N802
        return h.power_limit_mw


def _board(name: str, gib: int, used_gib: float, util: int, temp: int, watts: int, limit: int, i: int) -> FakeGpu:
    return FakeGpu(
        name=name,
        memory_total=gib * GIB,
        memory_used=int(used_gib * GIB),
        utilization=util,
        temperature=temp,
        power_mw=watts * 1000,
        power_limit_mw=limit * 1000,
        uuid=f"GPU-{i:08x}-fake-{name.replace(' ', '-').lower()}",
    )


# Per board while training: (share of memory used, utilisation %, temperature °C, watts).
BUSY: dict[str, list[tuple[float, int, int, int]]] = {
    "1": [(0.83, 99, 72, 410)],
    "2xL4": [(0.71, 98, 71, 68), (0.74, 97, 74, 70)],
    "8xH100": [(0.61, 97, 61, 640), (0.66, 99, 64, 672), (0.72, 95, 58, 598), (0.64, 98, 66, 655),
               (0.78, 96, 68, 690), (0.69, 99, 60, 633), (0.63, 97, 55, 560), (0.70, 95, 63, 618)],
}


def busy(nvml: FakeNvml, loads: list[tuple[float, int, int, int]]) -> FakeNvml:
    """The same boards with a training run's readings."""
    for gpu, (share, util, temp, watts) in zip(nvml.gpus, loads, strict=True):
        gpu.memory_used = int(gpu.memory_total * share)
        gpu.utilization, gpu.temperature, gpu.power_mw = util, temp, watts * 1000
    return nvml


def fixture(name: str) -> FakeNvml:
    """The named machine: none, 0, 1, 2xL4 (the book's g2-standard-24), 8xH100; `:busy` for one that trains."""
    base, _, load = name.partition(":")
    if load:
        if load != "busy" or base not in BUSY:
            raise ValueError(f"unknown fake GPU fixture {name!r}: {', '.join(f'{b}:busy' for b in BUSY)}")
        return busy(fixture(base), BUSY[base])
    if name == "none":
        return FakeNvml(driver=None)
    if name == "0":
        return FakeNvml()
    if name == "1":
        return FakeNvml(gpus=[_board("NVIDIA GeForce RTX 4090", 24, 1.2, 3, 41, 28, 450, 0)])
    if name == "2xL4":
        return FakeNvml(
            gpus=[_board("NVIDIA L4", 24, 0.4 + i * 0.1, 0, 38 + i, 16, 72, i) for i in range(2)],
            driver="535.183.01",
            cuda_driver=12020,
        )
    if name == "8xH100":
        return FakeNvml(
            gpus=[_board("NVIDIA H100 80GB HBM3", 80, 0.5, 0, 30 + i, 70, 700, i) for i in range(8)],
            driver="560.35.03",
            cuda_driver=12060,
        )
    raise ValueError(f"unknown fake GPU fixture {name!r}: none, 0, 1, 2xL4, 8xH100")


FIXTURES = ("none", "0", "1", "2xL4", "8xH100")
