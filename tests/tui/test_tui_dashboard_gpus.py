"""The dashboard's machine view: a row per local GPU read through NVML off the UI thread (or a summary
on a small terminal, or the CPU line), MFU shown as unknown rather than hidden, the last few alerts
with the newest error on top, and an MoE run's expert shares."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from rich.console import Console
from event_helpers import metrics
from engine.runfolder import events as ev
from tui_helpers import fake_run, fixed_report, screen_text, wait_until, write_events

from engine.machine.fake_nvml import FIXTURES, fixture
from engine.machine.monitor import GpuMonitor
from engine.machine.probe import probe_gpus
from tui.app import make_app
from tui.screens.dashboard import DashboardScreen
from tui.screens.dashboard_view import alert_lines, expert_bars, stats_table
from tui.screens.run_history import RunHistory
from tui.widgets.gpu_panel import GpuPanel, gpu_rows, gpu_summary, row_budget, short_name

MIB = 1024**2


class ThreadLog:
    """A fake NVML that records which thread made each call."""

    def __init__(self, nvml: Any) -> None:
        self.nvml, self.calls = nvml, []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.nvml, name)
        if not callable(value) or isinstance(value, type):
            return value

        def call(*args: Any) -> Any:
            self.calls.append((name, threading.get_ident()))
            return value(*args)

        return call


def plain(renderable: Any, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def dash(app) -> DashboardScreen:
    assert isinstance(app.screen, DashboardScreen)
    return app.screen


def busy_run(tmp_path, *, cpu: bool = False):
    """A run with three alerts (the error in the middle), null MFU and an MoE run's expert shares."""
    run = fake_run(tmp_path, steps=400, alert=True)
    mem = {"sys_rss": 412 * MIB} if cpu else {"sys_gpu_mem": 30 * 1024 * MIB}
    write_events(run, [
        ev.Alert(kind="oom", step=390, severity="error", suggest="pause",
                 message="out of memory at micro-batch 8: micro-batch halved to 4"),
        ev.Alert(kind="spike", step=400, severity="warning", suggest="rollback",
                 message="loss jumped to 9.1 at step 400, 3.1x the smoothed 2.9"),
        metrics(400, loss=2.3, lr=3e-4, epoch=0.4, eta_s=60.0, train_mfu=None, **mem,
                moe_expert_share=[0.18, 0.34, 0.22, 0.26]),
    ])
    return run


# --- NVML off the UI thread, every local GPU -------------------------------------------------------


async def test_every_gpu_is_polled_off_the_ui_thread(tmp_path) -> None:
    nvml = ThreadLog(fixture("2xL4:busy"))
    app = make_app(hardware=fixed_report("2xL4"), nvml=nvml, attach=str(fake_run(tmp_path)))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: dash(app).gpus)
        text = screen_text(app)
        assert "GPU0 L4" in text and "GPU1 L4" in text and "util  98%" in text and "74 °C" in text
        nvml.nvml.gpus[1].utilization = 42  # the next reading, about 2 s later, shows the change
        await wait_until(pilot, lambda: dash(app).gpus[1].utilization_pct == 42, timeout=8)
        await pilot.pause()
        assert " 42%" in screen_text(app)
    deadline = time.monotonic() + 5  # the worker's thread closes NVML on its next nap after the screen goes
    while "nvmlShutdown" not in [name for name, _ in nvml.calls] and time.monotonic() < deadline:
        time.sleep(0.05)
    names = [name for name, _ in nvml.calls]
    assert names.count("nvmlInit") == 1 and names.count("nvmlDeviceGetHandleByIndex") == 2  # opened once
    assert names.count("nvmlDeviceGetMemoryInfo") >= 4 and names[-1] == "nvmlShutdown"
    assert threading.main_thread().ident not in {ident for _, ident in nvml.calls}


async def test_a_failing_board_is_reported_and_the_dashboard_goes_on(tmp_path) -> None:
    nvml = fixture("2xL4:busy")
    run = fake_run(tmp_path)
    app = make_app(hardware=fixed_report("2xL4"), nvml=nvml, attach=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).gpus)

        def lost(handle: Any) -> Any:
            raise nvml.NVMLError("GPU is lost")

        nvml.nvmlDeviceGetMemoryInfo = lost
        await wait_until(pilot, lambda: dash(app).gpu_status != "ok", timeout=8)
        await pilot.pause()
        assert "GPUs  NVML failed: GPU is lost" in screen_text(app)
        write_events(run, [metrics(310, loss=2.1)])
        await wait_until(pilot, lambda: dash(app).history.step == 310)  # the run is still followed


@pytest.mark.parametrize("name", ["none", "0"])
async def test_no_gpu_shows_the_cpu_line_with_the_runs_memory(tmp_path, name) -> None:
    nvml = ThreadLog(fixture(name))
    app = make_app(hardware=fixed_report("2xL4"), nvml=nvml, attach=str(busy_run(tmp_path, cpu=True)))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).history.step == 400 and dash(app).gpu_status is not None)
        await pilot.pause()
        text = screen_text(app)
        assert "CPU  run's peak RSS 412.0 MiB" in text and "GPU0" not in text
        assert "MFU       unknown (CPU)" in text
    assert [n for n, _ in nvml.calls].count("nvmlInit") == 1  # nothing to poll: read once and stopped


async def test_one_gpu_row(tmp_path) -> None:
    app = make_app(hardware=fixed_report("1"), nvml=fixture("1"), attach=str(fake_run(tmp_path)))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dash(app).gpus)
        await pilot.pause()
        line = next(ln for ln in screen_text(app).splitlines() if "GPU0" in ln)
        assert "RTX 4090" in line and "1.2/24G" in line and "3%" in line and "41°C" in line and "28W" in line


async def test_eight_gpus_fold_into_a_summary_when_the_terminal_shrinks(tmp_path) -> None:
    app = make_app(hardware=fixed_report("8xH100"), nvml=fixture("8xH100:busy"), attach=str(fake_run(tmp_path)))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: dash(app).gpus)
        await pilot.pause()
        assert all(f"GPU{i} H100" in screen_text(app) for i in range(8))
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        text = screen_text(app)
        assert "GPU0" not in text and "8 GPUs H100 80GB HBM3" in text and "mem ▅▆▆▅▆▆▅▆ 61-78%" in text
        assert "step 10" in text  # the chart's axis is still on screen
        await pilot.resize_terminal(120, 36)
        await pilot.pause()
        assert "GPU7 H100" in screen_text(app)


@pytest.mark.parametrize("machine", ["2xL4:busy", "8xH100:busy"])
@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_snapshot_gpu_panels(snap_compare, tmp_path, machine, size) -> None:
    app = make_app(hardware=fixed_report(machine.split(":")[0]), nvml=fixture(machine), attach=str(busy_run(tmp_path)))

    async def loaded(pilot) -> None:
        await wait_until(pilot, lambda: dash(app).history.step == 400 and dash(app).gpus)
        text = screen_text(app)
        eight = machine.startswith("8")
        if size == (80, 24) and eight:  # 8 rows would squeeze the chart: one summary instead
            assert "8 GPUs H100 80GB HBM3  55-68 °C  5.1 kW" in text and "61-78%" in text and "95-99%" in text
            assert "GPU0" not in text
        else:
            assert all(f"GPU{i}" in text for i in range(8 if eight else 2))
        assert "experts" in text and "18-34%" in text and "MFU       unknown" in text

    assert snap_compare(app, terminal_size=size, run_before=loaded)


# --- pure parts --------------------------------------------------------------------------------


def test_gpu_monitor_reads_what_the_probe_reads_and_opens_nvml_once() -> None:
    for name in FIXTURES:
        nvml = ThreadLog(fixture(name))
        monitor = GpuMonitor(nvml)
        first, second = monitor.read(), monitor.read()
        assert first == second == probe_gpus(fixture(name))[0]
        assert monitor.active == bool(first) and monitor.status == ("no-driver" if name == "none" else "ok")
        monitor.close()
        names = [n for n, _ in nvml.calls]
        assert names.count("nvmlInit") == 1 and names.count("nvmlShutdown") == (name != "none")
    busy = fixture("8xH100:busy")
    assert [g.utilization for g in busy.gpus] != [g.utilization for g in fixture("8xH100").gpus]
    assert fixture("8xH100").gpus[0].memory_used == int(0.5 * 1024**3)  # the idle fixtures are unchanged
    with pytest.raises(ValueError):
        fixture("0:busy")


def test_gpu_rows_fit_every_width_and_share_their_columns() -> None:
    gpus = probe_gpus(fixture("8xH100:busy"))[0]
    for width in range(30, 131, 5):
        rows = gpu_rows(gpus, width)
        assert len(rows) == 8 and all(r.cell_len <= width for r in rows), width
        ends = {r.plain.index("%") for r in rows}
        assert len(ends) == 1, (width, [r.plain for r in rows])  # same layout on every row
    wide = gpu_rows(gpus, 90)[4].plain
    assert wide.startswith("GPU4 H100 80GB HBM3 ") and "62.4/80 GiB" in wide and "util  96%" in wide
    assert "68 °C" in wide and "690/700 W" in wide
    narrow = gpu_rows(gpus, 40)[4].plain
    assert "H100" not in narrow and "62/80G" in narrow and "96%" in narrow
    assert short_name("NVIDIA GeForce RTX 4090") == "RTX 4090" and short_name("NVIDIA L4") == "L4"
    head, line = (t.plain for t in gpu_summary(gpus, 50))
    assert head == "8 GPUs H100 80GB HBM3  55-68 °C  5.1 kW"
    assert line == "mem ▅▆▆▅▆▆▅▆ 61-78%  util ████████ 95-99%"
    assert row_budget(36) >= 8 > row_budget(24) >= 2


def test_gpu_panel_switches_to_a_summary_on_a_short_screen() -> None:
    panel = GpuPanel()
    panel.update(probe_gpus(fixture("8xH100:busy"))[0])
    assert len(panel.lines(90, 36)) == 8 and len(panel.lines(50, 24)) == 2
    panel.update([], rss=3 * MIB)
    assert [t.plain for t in panel.lines(50, 24)] == ["CPU  run's peak RSS 3.0 MiB"]
    panel.update([], status="NVML failed: GPU is lost")
    assert [t.plain for t in panel.lines(50, 24)] == ["GPUs  NVML failed: GPU is lost"]
    panel.update(None)
    assert panel.lines(50, 24) == []  # nothing read yet: no panel


def test_alerts_newest_first_with_the_newest_error_on_top() -> None:
    h = RunHistory()
    h.apply(ev.State(state="running", step=0, message="training"))
    for step, kind, severity in [(10, "a", "warning"), (20, "b", "error"), (30, "c", "warning"),
                                 (40, "d", "info"), (50, "e", "warning"), (60, "f", "warning")]:
        h.apply(ev.Alert(kind=kind, step=step, severity=severity, message=kind * 3, suggest="rescue"))
    lines = plain(alert_lines(h, 5, live=True)).splitlines()
    assert [ln.split()[3] for ln in lines] == ["b:", "f:", "e:", "d:", "c:"]
    assert lines[0].startswith("✖ step 20  b: bbb  press x to rescue") and "press" not in "".join(lines[1:])
    assert lines[3].startswith("i step 40")
    assert len(plain(alert_lines(h, 3, live=False)).splitlines()) == 3
    assert "press" not in plain(alert_lines(h, 5, live=False))  # a finished run has no remedies
    h.apply(ev.Alert(kind="g", step=70, severity="error", message="ggg"))
    assert plain(alert_lines(h, 5, live=True)).splitlines()[0].startswith("✖ step 70  g: ggg")


def test_mfu_is_shown_as_unknown_and_expert_shares_as_bars() -> None:
    h = RunHistory()
    assert "MFU       -" in plain(stats_table(h))
    h.apply(metrics(1, loss=3.0, train_mfu=None, sys_rss=100 * MIB))
    assert "MFU       unknown (CPU)" in plain(stats_table(h)) and h.on_cpu
    h.apply(metrics(2, loss=3.0, train_mfu=None, sys_gpu_mem=100 * MIB))
    assert "MFU       unknown\n" in plain(stats_table(h)) and h.on_cpu is False
    h.apply(metrics(3, loss=3.0, train_mfu=0.412, sys_gpu_mem=100 * MIB, moe_expert_share=[0.1, 0.6, 0.28, 0.02]))
    table = plain(stats_table(h))
    assert "MFU       41.2%" in table and "experts   ▂█▄▁ 2-60%" in table
    bars = expert_bars([0.1, 0.6, 0.28, 0.02])
    styles = [span.style for span in bars.spans][:4]
    assert styles == ["cyan", "yellow", "cyan", "red"]  # overloaded yellow, starved red
    many = expert_bars([1 / 40] * 40).plain.splitlines()
    assert [len(x) for x in many] == [16, 16, 8, len("2% each")]
