"""The TUI comes and goes, the run stays (RELIABILITY P5, P11, P12): re-attaching replays the run's
history, a bug in a handler ends only the UI, and a tiny or resized terminal crashes nothing."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from tui_helpers import fake_run, fixed_report, screen_text, wait_until

from engine.run import job

from engine import processes
from engine.runfolder import folder as runfolder
from engine.machine.fake_nvml import fixture
from tui.app import make_app
from tui.modals.confirm import QuitModal
from tui.screens.dashboard import DashboardScreen
from tui.screens.runs import RunsScreen

# A stand-in for the job, started the way the job is (job.spawn_detached): it writes status.json
# (pid + start time, as the real one) and events with the run folder's own writers, 20 steps a second.
RUNNER = """
import math, os, sys, time
from pathlib import Path
from engine import processes
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
run, alert_at = Path(sys.argv[1]), int(sys.argv[2])
log = runfolder.EventLog(run)
me = {"pid": os.getpid(), "pid_start": processes.pid_start_time(os.getpid())}
log.emit(ev.State(state="running", step=0, message="training", total_steps=100000))
step = 0
while True:
    step += 1
    loss = 2 + 3 * math.exp(-step / 40)
    log.emit(ev.Metrics(step=step, epoch=step / 1e5, tokens=step * 512, eta_s=1.0, branch=0, train_loss=round(loss, 5),
                        train_lr=1e-3, train_grad_norm=1.0, train_tok_per_s=1e4, train_step_ms=50.0, train_mfu=None,
                        train_loss_smooth=loss))
    if step % 10 == 0:
        log.emit(ev.Checkpoint(step=step, name=f"step-{step:06d}", branch=0, path=str(run / "checkpoints"),
                               reason="interval", deleted=[]))
    if step == alert_at:
        log.emit(ev.Alert(kind="plateau", step=step, suggest="rescue", message=f"flat since step {step - 10}"))
    runfolder.write_status(run, {"state": "running", "step": step, "loss": loss, **me})
    time.sleep(0.05)
"""


@pytest.fixture
def runner(tmp_path):
    """A live run folder whose runner is a detached process; killed afterwards."""
    runs = tmp_path / "runs"
    run = runfolder.create_run(runs, "fake", 'technique = "scratch"\nname = "fake"\n')
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    procs = []

    def start(alert_at: int = 10**9) -> Path:
        procs.append(job.spawn_detached([sys.executable, str(script), str(run), str(alert_at)],
                                        log=run / runfolder.LOG, cwd=run))
        _wait(lambda: runfolder.read_status(run).get("step", 0) >= 3, "the runner's first steps")
        return run

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _wait(cond, what: str, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _metrics(run: Path) -> list[tuple[float, float]]:
    return [(float(e["step"]), e["train/loss"]) for e in runfolder.read_events(run)[0] if e["type"] == "metrics"]


def _dash(app) -> DashboardScreen:  # noqa: ANN001
    assert isinstance(app.screen, DashboardScreen), app.screen
    return app.screen


@pytest.mark.slow
async def test_P5_reattach_finds_the_run_and_replays_its_events(runner) -> None:
    run = runner(alert_at=40)
    first = make_app(hardware=fixed_report("none"), nvml=fixture("none"), attach=str(run))
    async with first.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: _dash(first).history.step >= 5)
        seen = _dash(first).history.step
        await pilot.press("d")  # detach: the UI goes, the run stays
        await pilot.pause()
    assert first.return_value == 0

    # while no UI watches: more steps, checkpoints and an alert
    _wait(lambda: runfolder.read_status(run)["step"] >= max(seen, 40) + 10, "steps while detached")
    again = make_app(hardware=fixed_report("none"), nvml=fixture("none"), runs_dir=str(run.parent))
    async with again.run_test(size=(100, 30)) as pilot:
        assert isinstance(again.screen, RunsScreen)  # found through the registry: pid + start time alive
        assert "running" in screen_text(again) and run.name in screen_text(again)
        await pilot.press("enter")
        on_disk = _metrics(run)  # what the runner had written when the dashboard opened
        await wait_until(pilot, lambda: _dash(again).history.step >= on_disk[-1][0])
        h = _dash(again).history
        assert h.train[: len(on_disk)] == on_disk  # the whole loss history, from step 1, in order
        assert h.state == "running" and h.alerts[-1].message == "flat since step 30"
        newest = max(s for _, s in h.checkpoints.items())
        assert newest >= 50 and [s for _, s in _dash(again).checkpoints()[:2]] == [newest, newest - 10]
        text = screen_text(again)
        assert "RUNNING" in text and run.name in text and "plateau: flat since step 30" in text
        assert f"◆ {newest:>6}" in text  # the newest checkpoints are listed
        await pilot.press("d")
        assert isinstance(again.screen, RunsScreen)
    assert processes.pid_alive(runfolder.read_status(run)["pid"])


@pytest.mark.slow
async def test_P11_exception_in_a_handler_ends_only_the_ui(runner) -> None:
    run = runner()
    app = make_app(hardware=fixed_report("none"), nvml=fixture("none"), attach=str(run))
    with pytest.raises(RuntimeError, match="a bug in a handler"):
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: _dash(app).history.step >= 3)

            def broken() -> None:
                raise RuntimeError("a bug in a handler")

            _dash(app).action_save = broken  # the save key's action now raises
            await pilot.press("s")
            await pilot.pause()
    assert app.return_code == 1 and app.crashed_run == run
    assert f"llm-wizard attach {run.name}" in (app.crash_note() or "")
    assert not (run / runfolder.COMMANDS_FILE).exists()  # nothing was sent to the run

    # the runner never noticed: same process, still stepping, still running
    before = runfolder.read_status(run)
    after = _wait(lambda: (s := runfolder.read_status(run))["step"] >= before["step"] + 10 and s, "10 more steps")
    assert after["pid"] == before["pid"] and after["state"] == "running" and processes.pid_alive(after["pid"])

    # and the UI starts again and attaches, with working controls
    app = make_app(hardware=fixed_report("none"), nvml=fixture("none"), attach=str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: _dash(app).history.step >= after["step"])
        assert _dash(app).history.state == "running"
        await pilot.press("p")
        await wait_until(pilot, lambda: (run / runfolder.COMMANDS_FILE).exists())
        assert '"cmd": "pause"' in (run / runfolder.COMMANDS_FILE).read_text()
        await pilot.press("ctrl+q", "c")  # close the UI, leave the run
        await pilot.pause()
    assert app.return_code == 0 and app.crash_note() is None


def test_P11_crash_says_the_run_goes_on_and_exits_1(tmp_path, capfd) -> None:
    run = fake_run(tmp_path)  # live: its pid is this test process

    def broken() -> None:
        raise RuntimeError("a bug in a timer")

    app = make_app(hardware=fixed_report("none"), nvml=fixture("none"), attach=str(run))
    app.call_later(lambda: app.set_timer(0.3, broken))
    assert app.run(headless=True, size=(80, 24)) == 1  # the CLI's exit code: not 0 after a crash
    err = capfd.readouterr().err
    assert "a bug in a timer" in err  # Textual's traceback, then our note under it
    assert f"run {run.name} goes on (the error did not reach it). Back to it: llm-wizard attach {run.name}" in err
    assert make_app(hardware=fixed_report("none")).crash_note() is None  # no crash, no note


SIZES = [(20, 5), (100, 30), (20, 5), (1, 1), (80, 24)]


async def test_P12_tiny_and_resized_terminal_dashboard(tmp_path) -> None:
    run = fake_run(tmp_path, steps=300, alert=True, pid=os.getpid())
    app = make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), attach=str(run))
    async with app.run_test(size=SIZES[0]) as pilot:
        await wait_until(pilot, lambda: _dash(app).history.step == 300)
        for size in SIZES:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.is_running and app.size == size
            assert screen_text(app).strip() or size == (1, 1)  # one cell may well be blank
            if size == (100, 30):
                text = screen_text(app)
                assert "RUNNING" in text and "300 / 1,000" in text and "plateau" in text
        await pilot.resize_terminal(20, 5)
        await pilot.press("ctrl+c")  # the quit question in a tiny terminal
        await pilot.pause()
        assert isinstance(app.screen, QuitModal)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert "Close the UI or stop training?" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_P12_tiny_and_resized_terminal_wizard(tmp_path) -> None:
    app = make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), runs_dir=str(tmp_path / "runs"))
    async with app.run_test(size=SIZES[0]) as pilot:
        await pilot.pause()
        for size in SIZES:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.is_running and app.size == size
            assert screen_text(app).strip() or size == (1, 1)  # one cell may well be blank
        await pilot.resize_terminal(20, 5)
        await pilot.press("enter")  # the next step, laid out in 20x5
        await pilot.pause()
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert app.is_running and getattr(app.screen, "STEP", None) == 1 and "Technique" in screen_text(app)


@pytest.mark.slow
def test_runner_stand_in_is_killable(runner) -> None:
    run = runner()
    pid = runfolder.read_status(run)["pid"]
    assert os.getsid(pid) == pid  # detached like the job: its own session
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: runfolder.read_status(run)["state"] == "crashed", "the dead runner to read as crashed")
