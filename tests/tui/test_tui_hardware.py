"""The first screen: the hardware report, fast, with the fake NVML's machines."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tui_helpers import fixed_report, screen_text

from engine.machine.fake_nvml import fixture
from tui.app import make_app
from tui.widgets.gpu import GpuCard


async def _probed(app, pilot) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_two_l4_render_with_memory_and_readings() -> None:
    app = make_app(nvml=fixture("2xL4"), show_runs=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _probed(app, pilot)
        assert app.hardware is not None and app.hardware.gpu_count == 2
        assert len(app.screen.query(GpuCard)) == 2
        text = screen_text(app)
        assert text.count("NVIDIA L4") == 2
        assert "23.6 GiB free" in text and "16/72 W" in text and "38 °C" in text
        assert "driver 535.183.01" in text
        # this machine's torch is a CPU build: the problem and its fix are shown
        assert "CPU-only build" in text and "fix:" in text


async def test_no_gpu_is_said_plainly() -> None:
    app = make_app(nvml=fixture("none"), show_runs=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _probed(app, pilot)
        assert not app.screen.query(GpuCard)
        assert "No NVIDIA GPU: training runs on the CPU" in screen_text(app)


async def test_reprobe_key_reads_again() -> None:
    fake = fixture("1")
    app = make_app(nvml=fake, show_runs=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _probed(app, pilot)
        assert "RTX 4090" in screen_text(app)
        fake.gpus[0].memory_used = 20 * 1024**3
        await pilot.press("r")
        await _probed(app, pilot)
        assert "20.0 GiB / 24.0 GiB" in screen_text(app)


def test_first_screen_path_imports_nothing_heavy() -> None:
    code = ("import sys; import tui.app, tui.wizard, tui.screens.hardware; "
            "from engine.machine.probe import probe; probe(import_torch=False); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'accelerate') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_snapshot_hardware_2xl4(snap_compare, size) -> None:
    assert snap_compare(make_app(hardware=fixed_report("2xL4"), show_runs=False), terminal_size=size)


def test_snapshot_hardware_cpu_only(snap_compare) -> None:
    assert snap_compare(make_app(hardware=fixed_report("none"), show_runs=False), terminal_size=(80, 24))
