"""The hardware probe against the fake NVML's machines, and each problem from a faked environment."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from engine.machine import fake_nvml
from engine.machine.probe import HardwareReport, TorchInfo, find_problems, probe, probe_gpus, probe_torch

GIB = 1024**3


def _report(**changes) -> HardwareReport:
    base = HardwareReport(
        gpus=[], driver_version=None, cuda_driver_version=None, nvml_status="no-driver",
        torch=TorchInfo(installed=True, version="2.13.0", cuda=None, cuda_available=False),
        packages={"bitsandbytes": "0.50.2"}, python="3.11.7", platform="Linux", nvcc_cuda=None,
        runs_dir="/runs", disk_free_bytes=100 * 10**9,
    )
    return dataclasses.replace(base, **changes)


def _codes(report: HardwareReport, **kw) -> set[str]:
    kw.setdefault("system", "Linux")
    kw.setdefault("release", "6.1.0")
    kw.setdefault("bnb_libs", ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda124.so"])
    return {p.code for p in find_problems(report, **kw)}


def test_no_driver_is_cpu_only_not_an_error():
    gpus, driver, cuda, status = probe_gpus(fake_nvml.fixture("none"))
    assert (gpus, driver, cuda, status) == ([], None, None, "no-driver")


def test_zero_gpus_with_a_driver():
    gpus, driver, cuda, status = probe_gpus(fake_nvml.fixture("0"))
    assert gpus == [] and driver == "550.54.15" and cuda == "12.4" and status == "ok"


def test_one_gpu_every_field():
    (g,), driver, cuda, _ = probe_gpus(fake_nvml.fixture("1"))
    assert g.name == "NVIDIA GeForce RTX 4090"
    assert g.memory_total_bytes == 24 * GIB
    assert g.memory_free_bytes == 24 * GIB - int(1.2 * GIB)
    assert (g.utilization_pct, g.temperature_c, g.power_w, g.power_limit_w) == (3, 41, 28.0, 450.0)
    assert g.uuid.startswith("GPU-")


def test_two_l4_the_books_machine():
    gpus, driver, cuda, _ = probe_gpus(fake_nvml.fixture("2xL4"))
    assert [g.name for g in gpus] == ["NVIDIA L4", "NVIDIA L4"]
    assert [g.index for g in gpus] == [0, 1]
    assert all(g.memory_total_bytes == 24 * GIB for g in gpus)
    assert (driver, cuda) == ("535.183.01", "12.2")


def test_eight_h100():
    gpus, _, cuda, _ = probe_gpus(fake_nvml.fixture("8xH100"))
    assert len(gpus) == 8 and {g.memory_total_bytes for g in gpus} == {80 * GIB}
    assert len({g.uuid for g in gpus}) == 8 and cuda == "12.6"


def test_unsupported_readings_are_missing_not_fatal():
    nvml = fake_nvml.fixture("1")

    def unsupported(*_):
        raise fake_nvml.NVMLError_NotSupported("Not Supported")

    nvml.nvmlDeviceGetPowerUsage = unsupported
    nvml.nvmlDeviceGetTemperature = unsupported
    (g,), *_ = probe_gpus(nvml)
    assert g.power_w is None and g.temperature_c is None and g.memory_total_bytes == 24 * GIB


def test_env_selects_the_fake(monkeypatch):
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    report = probe()
    assert report.gpu_count == 2 and report.nvml_status == "ok"
    # this machine's torch is a CPU build, so a GPU machine with it is an error worth showing
    assert "torch-cpu-build" in {p.code for p in report.problems}


def test_cpu_only_machine_reports_a_note():
    codes = _codes(_report())
    assert "cpu-only" in codes
    assert not {c for c in codes if c.startswith("torch")}


def test_cpu_torch_on_a_gpu_machine():
    gpus, driver, cuda, _ = probe_gpus(fake_nvml.fixture("1"))
    assert "torch-cpu-build" in _codes(_report(gpus=gpus, driver_version=driver, cuda_driver_version=cuda,
                                               nvml_status="ok"))


def test_torch_cuda_newer_than_the_driver():
    gpus, driver, cuda, _ = probe_gpus(fake_nvml.fixture("2xL4"))  # driver supports CUDA 12.2
    report = _report(gpus=gpus, driver_version=driver, cuda_driver_version=cuda, nvml_status="ok",
                     torch=TorchInfo(installed=True, version="2.8.0+cu128", cuda="12.8", cuda_available=False))
    problems = find_problems(report, system="Linux", release="6.1", bnb_libs=["libbitsandbytes_cuda128.so"])
    (p,) = [p for p in problems if p.code == "torch-cuda-newer-than-driver"]
    assert "12.8" in p.message and "12.2" in p.message and p.severity == "error"
    ok = dataclasses.replace(report, torch=TorchInfo(installed=True, version="2.8.0+cu121", cuda="12.1",
                                                     cuda_available=True, device_count=2))
    assert "torch-cuda-newer-than-driver" not in _codes(ok)


def test_nvcc_toolkit_that_differs_from_torch():
    report = _report(nvcc_cuda="11.8", torch=TorchInfo(installed=True, version="2.5", cuda="12.4"))
    assert "nvcc-mismatch" in _codes(report)
    assert "nvcc-mismatch" not in _codes(dataclasses.replace(report, nvcc_cuda="12.4"))


def test_bitsandbytes_without_its_cuda_library():
    gpus, driver, cuda, _ = probe_gpus(fake_nvml.fixture("1"))
    report = _report(gpus=gpus, driver_version=driver, cuda_driver_version=cuda, nvml_status="ok",
                     torch=TorchInfo(installed=True, version="2.5", cuda="12.4", cuda_available=True))
    assert "bitsandbytes-no-cuda" in _codes(report, bnb_libs=["libbitsandbytes_cpu.so"])
    assert "bitsandbytes-no-cuda" not in _codes(report, bnb_libs=["libbitsandbytes_cuda124.so"])


def test_low_disk_in_the_runs_folder():
    assert "low-disk" in _codes(_report(disk_free_bytes=5 * 10**9))
    assert "low-disk" not in _codes(_report(disk_free_bytes=50 * 10**9))


def test_windows_without_wsl_and_macos():
    assert "windows" in _codes(_report(), system="Windows")
    assert "macos" in _codes(_report(), system="Darwin")
    assert "wsl" in _codes(_report(), release="5.15.90.1-microsoft-standard-WSL2")


def test_torch_probe_reads_the_build_without_importing():
    code = ("import sys; from engine.machine.probe import probe_torch; t = probe_torch(False); "
            "print(t.version, t.cuda, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    import torch

    assert out[0] == torch.__version__
    assert out[1] == str(torch.version.cuda)
    assert out[2] == "False"


def test_torch_probe_with_import_agrees_with_torch():
    import torch

    t = probe_torch(True)
    assert t.cuda_available == torch.cuda.is_available() and t.version == torch.__version__


def test_doctor_json_here(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tui.cli", "doctor", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for key in ("gpus", "driver_version", "cuda_driver_version", "torch", "packages", "problems"):
        assert key in data
    assert data["gpus"] == []
    assert set(data["torch"]) >= {"version", "cuda", "cuda_available", "device_count"}
    assert any(p["code"] == "cpu-only" and p["severity"] == "info" for p in data["problems"])
    assert all(set(p) >= {"severity", "message", "fix"} for p in data["problems"])


@pytest.mark.parametrize("fixture", ["2xL4", "8xH100"])
def test_doctor_json_with_fake_gpus(fixture, monkeypatch):
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", fixture)
    res = subprocess.run([sys.executable, "-m", "tui.cli", "doctor", "--json"], capture_output=True, text=True)
    data = json.loads(res.stdout)
    assert len(data["gpus"]) == int(fixture[0])
    g = data["gpus"][0]
    assert set(g) >= {"index", "name", "memory_total_bytes", "memory_free_bytes", "utilization_pct",
                      "temperature_c", "power_w"}


def test_doctor_human_output_names_gpus(monkeypatch):
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    res = subprocess.run([sys.executable, "-m", "tui.cli", "doctor"], capture_output=True, text=True,
                         env={**__import__("os").environ, "COLUMNS": "120"})
    assert res.returncode == 0
    assert res.stdout.count("NVIDIA L4") == 2 and "CPU-only build" in res.stdout
