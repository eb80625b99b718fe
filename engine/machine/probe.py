"""What this machine has: GPUs through NVML, the software stack, and the problems worth fixing.

Fast on purpose (it feeds the wizard's first screen): NVML is cheap, package versions come from
metadata, and torch is only imported where its answer is not known without it (a CUDA or macOS
build: `torch.cuda.is_available()` / MPS). A CPU-only build is read from `torch/version.py`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.machine import logind
from engine.machine.problems import Problem
from engine.paths import runs_dir

# A checkpoint of a 1B-parameter model with its AdamW state: 4 bytes of fp32 weights + 8 bytes of
# moments a parameter = 12 GB; an atomic save needs room for that next to the previous one.
CHECKPOINT_1B_BYTES = 12 * 10**9

PACKAGES = ("transformers", "datasets", "accelerate", "peft", "bitsandbytes", "tokenizers",
            "safetensors", "nvidia-ml-py")
OPTIONAL_PACKAGES = ("deepspeed", "xformers", "flash-attn")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_pct: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None


@dataclass(frozen=True)
class TorchInfo:
    installed: bool
    version: str | None = None
    cuda: str | None = None  # the CUDA version torch was built for; None for a CPU build
    cuda_available: bool | None = None  # None: not checked (torch not imported)
    device_count: int = 0
    mps_available: bool = False
    error: str | None = None


@dataclass
class HardwareReport:
    gpus: list[GpuInfo]
    driver_version: str | None
    cuda_driver_version: str | None
    nvml_status: str  # "ok", "no-driver", or the NVML error text
    torch: TorchInfo
    packages: dict[str, str | None]
    python: str
    platform: str
    nvcc_cuda: str | None
    runs_dir: str
    disk_free_bytes: int | None
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)


# --- NVML -------------------------------------------------------------------------------------------


def load_nvml() -> Any:
    """The real pynvml module, or the fake named by $LLM_WIZARD_FAKE_GPUS (tests and demos)."""
    fake = os.environ.get("LLM_WIZARD_FAKE_GPUS")
    if fake:
        from engine.machine.fake_nvml import fixture

        return fixture(fake)
    import pynvml

    return pynvml


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends: a missing reading, not a failure
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_gpus(nvml: Any | None = None) -> tuple[list[GpuInfo], str | None, str | None, str]:
    """(gpus, driver version, CUDA version the driver supports, status)."""
    try:
        nvml = nvml if nvml is not None else load_nvml()
    except ImportError:
        return [], None, None, "no-driver"
    try:
        nvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound / DriverNotLoaded: a CPU-only machine
        name = type(err).__name__
        if "LibraryNotFound" in name or "DriverNotLoaded" in name or "NotFound" in str(err):
            return [], None, None, "no-driver"
        return [], None, None, f"NVML failed: {err}"
    try:
        driver = _try(nvml.nvmlSystemGetDriverVersion)
        cuda_int = _try(nvml.nvmlSystemGetCudaDriverVersion)
        cuda = f"{cuda_int // 1000}.{(cuda_int % 1000) // 10}" if cuda_int else None
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            util = _try(nvml.nvmlDeviceGetUtilizationRates, h)
            power = _try(nvml.nvmlDeviceGetPowerUsage, h)
            limit = _try(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_text(nvml.nvmlDeviceGetName(h)),
                    uuid=_text(_try(nvml.nvmlDeviceGetUUID, h) or ""),
                    memory_total_bytes=int(mem.total),
                    memory_used_bytes=int(mem.used),
                    memory_free_bytes=int(mem.free),
                    utilization_pct=util.gpu if util is not None else None,
                    temperature_c=_try(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
                    power_w=power / 1000 if power is not None else None,
                    power_limit_w=limit / 1000 if limit is not None else None,
                )
            )
        return gpus, _text(driver) if driver else None, cuda, "ok"
    finally:
        _try(nvml.nvmlShutdown)


# --- software ----------------------------------------------------------------------------------------


def _torch_build_cuda(torch_dir: Path) -> str | None:
    """Read `cuda = '12.8'` from torch/version.py without importing torch (1.8 s)."""
    try:
        text = (torch_dir / "version.py").read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", text, re.M)
    return m.group(1) if m else None


def probe_torch(import_torch: bool | None = None) -> TorchInfo:
    """torch's version and CUDA build; imports torch only where needed (or when told to)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return TorchInfo(installed=False)
    version = _version("torch")
    cuda = _torch_build_cuda(Path(spec.origin).parent)
    if import_torch is None:
        import_torch = cuda is not None or sys.platform == "darwin"
    if not import_torch:
        return TorchInfo(installed=True, version=version, cuda=cuda, cuda_available=False if cuda is None else None)
    try:
        import torch

        available = bool(torch.cuda.is_available())
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        return TorchInfo(
            installed=True,
            version=torch.__version__,
            cuda=torch.version.cuda,
            cuda_available=available,
            device_count=torch.cuda.device_count() if available else 0,
            mps_available=mps,
        )
    except Exception as err:  # a broken install is a finding, not a crash
        return TorchInfo(installed=True, version=version, cuda=cuda, error=f"{type(err).__name__}: {err}")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def probe_packages() -> dict[str, str | None]:
    found = {name: _version(name) for name in PACKAGES}
    found.update({name: v for name in OPTIONAL_PACKAGES if (v := _version(name))})
    return found


def nvcc_cuda_version() -> str | None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def bitsandbytes_native_libs() -> list[str] | None:
    """Names of bitsandbytes' native libraries, without importing it (4 s); None if absent."""
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.origin:
        return None
    return sorted(p.name for p in Path(spec.origin).parent.glob("libbitsandbytes*"))


def disk_free(path: Path) -> int | None:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


# --- problems ----------------------------------------------------------------------------------------


def _ver_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def find_problems(
    report: HardwareReport, *, system: str | None = None, release: str | None = None,
    bnb_libs: list[str] | None = None,
) -> list[Problem]:
    """Everything that will stop or slow training here, each with a one-line fix."""
    system = system or platform.system()
    release = (release if release is not None else platform.release()).lower()
    t = report.torch
    out: list[Problem] = []
    if system == "Windows":
        out.append(Problem("error", "windows", "Native Windows is not supported for training (no NCCL, "
                           "bitsandbytes and compile are limited)", "Run llm-wizard inside WSL2 (wsl --install)"))
    if system == "Darwin":
        out.append(Problem("warning", "macos", "macOS has no CUDA: training uses Apple MPS or the CPU, "
                           "and QLoRA/8-bit optimizers are unavailable",
                           "Use a Linux machine with an NVIDIA GPU for anything beyond small models"))
    if "microsoft" in release:
        out.append(Problem("info", "wsl", "Running under WSL", "Keep data and runs inside the Linux file "
                           "system (~/), not /mnt/c, for fast I/O"))
    if not t.installed:
        out.append(Problem("error", "no-torch", "PyTorch is not installed", "pip install torch"))
    elif t.error:
        out.append(Problem("error", "torch-broken", f"PyTorch fails to load: {t.error}",
                           "Reinstall torch in this environment"))
    if not report.gpus and system != "Darwin":
        why = "no NVIDIA driver found" if report.nvml_status == "no-driver" else "no NVIDIA GPU found"
        out.append(Problem("info", "cpu-only", f"CPU only: {why}; training runs on the CPU, which suits "
                           "tiny models and demos", "For real runs use a machine with an NVIDIA GPU"))
    if report.nvml_status not in ("ok", "no-driver"):
        out.append(Problem("warning", "nvml", report.nvml_status, "Check the driver with nvidia-smi"))
    if report.gpus and t.installed and not t.error:
        if t.cuda is None:
            out.append(Problem("error", "torch-cpu-build", f"PyTorch {t.version} is a CPU-only build, but "
                               f"this machine has {len(report.gpus)} NVIDIA GPU(s)",
                               "Install a CUDA build of torch that your driver supports (pytorch.org's "
                               "install selector)"))
        elif report.cuda_driver_version and _ver_tuple(t.cuda) > _ver_tuple(report.cuda_driver_version):
            out.append(Problem("error", "torch-cuda-newer-than-driver",
                               f"PyTorch is built for CUDA {t.cuda}, but the driver "
                               f"{report.driver_version} supports CUDA up to {report.cuda_driver_version}",
                               f"Update the NVIDIA driver, or install a torch build for CUDA <= "
                               f"{report.cuda_driver_version}"))
        elif t.cuda_available is False:
            out.append(Problem("error", "cuda-unavailable", "torch.cuda.is_available() is False although "
                               "GPUs are present", "Check CUDA_VISIBLE_DEVICES and that the driver works "
                               "(nvidia-smi)"))
    if report.nvcc_cuda and t.cuda and _ver_tuple(report.nvcc_cuda) != _ver_tuple(t.cuda):
        out.append(Problem("warning", "nvcc-mismatch", f"nvcc on PATH is CUDA {report.nvcc_cuda} but PyTorch "
                           f"is built for CUDA {t.cuda}: extensions built against it (DeepSpeed, flash-attn) can "
                           "fail or run very slowly", f"Put a CUDA {t.cuda} toolkit first on PATH, or set "
                           "CUDA_HOME to it"))
    if report.packages.get("bitsandbytes") and report.gpus:
        libs = bnb_libs if bnb_libs is not None else (bitsandbytes_native_libs() or [])
        if not any("cuda" in name for name in libs):
            out.append(Problem("warning", "bitsandbytes-no-cuda", "bitsandbytes has no CUDA library here: "
                               "QLoRA and 8-bit optimizers will not run on the GPU",
                               "pip install -U bitsandbytes (a release built for your CUDA)"))
    if not report.packages.get("bitsandbytes"):
        out.append(Problem("warning", "no-bitsandbytes", "bitsandbytes is not installed: no QLoRA or 8-bit "
                           "optimizers", "pip install bitsandbytes"))
    if report.disk_free_bytes is not None and report.disk_free_bytes < CHECKPOINT_1B_BYTES:
        out.append(Problem("warning", "low-disk", f"Only {report.disk_free_bytes / 1e9:.1f} GB free in "
                           f"{report.runs_dir}; a checkpoint of a 1B model with its optimizer needs about "
                           f"{CHECKPOINT_1B_BYTES / 1e9:.0f} GB", "Free space, or point --runs-dir / "
                           "LLM_WIZARD_RUNS at a larger disk"))
    return out


def probe(*, nvml: Any | None = None, import_torch: bool | None = None, runs: str | None = None) -> HardwareReport:
    """The full report that `llm-wizard doctor` and the wizard's first screen show."""
    gpus, driver, cuda_driver, status = probe_gpus(nvml)
    where = runs_dir(runs)
    report = HardwareReport(
        gpus=gpus,
        driver_version=driver,
        cuda_driver_version=cuda_driver,
        nvml_status=status,
        torch=probe_torch(import_torch),
        packages=probe_packages(),
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        nvcc_cuda=nvcc_cuda_version(),
        runs_dir=str(where),
        disk_free_bytes=disk_free(where),
    )
    report.problems = find_problems(report)
    if (risk := logind.logout_risk()) is not None:  # RELIABILITY P9: logout would end detached runs
        report.problems.append(risk)
    return report
