"""Comparing runs and keeping rolled-back branches in sight: `llm-wizard runs compare` (table and --json), the
compare view overlaying loss curves (snapshot), the dashboard's chart with an abandoned branch dimmed and the
rollback point marked (snapshot), eval samples and the TensorBoard command on the dashboard, `notify-test`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine.runfolder import events as ev
from engine.track.compare import fold, spec_differences, summarize
from event_helpers import metrics
from track_helpers import webhook_receiver
from tui.app import make_app
from tui.cli import main
from tui.screens.compare import CompareScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.run_history import RunHistory
from tui.widgets.chart import DIMMED
from tui_helpers import checkpoint, fake_run, fixed_report, screen_text, wait_until, write_events
from engine.machine.fake_nvml import fixture

ROLLED = "20260103-080000-rescued-c0de"


def rolled_back_run(root: Path, name: str = ROLLED) -> Path:
    """A run that plateaued, was rolled back to step 200 with a lower LR, and then went lower: branch 1."""
    run = fake_run(root, steps=300, name=name)
    later: list[ev.Event] = [
        ev.State(state="running", step=200, message="rolled back to step-000200 (branch 1)",
                 rollback_to="step-000200", branch=1),
        ev.ControlAck(id="r1", cmd="rollback", step=200, ok=True, message="rolled back", checkpoint="step-000200",
                      branch=1)]
    for step in range(210, 401, 10):
        loss = round(2.2 + 3.3 * math.exp(-200 / 80) - 0.004 * (step - 200), 4)
        later.append(metrics(step, loss=loss, lr=3e-5, branch=1, train_tok_per_s=9000.0, epoch=step / 1000))
    later.append(ev.Eval(step=300, eval_loss=1.95, eval_ppl=math.exp(1.95),
                         samples=[{"prompt": "def main(", "text": "):\n    return 0"}]))
    later.append(checkpoint(300, branch=1))
    write_events(run, later)
    (run / "spec.toml").write_text('technique = "scratch"\nname = "rescued"\n[train]\nlr = 3e-5\n')
    return run


def test_fold_keeps_the_abandoned_branch_apart() -> None:
    events = [metrics(s, loss=5 - s / 100) for s in range(10, 60, 10)]
    events += [ev.State(state="running", step=20, message="rolled back", rollback_to="step-000020", branch=1),
               metrics(30, loss=1.0)]
    train, val, abandoned = fold(events)
    assert train == [(10.0, 4.9), (20.0, 4.8), (30.0, 1.0)]
    assert len(abandoned) == 1 and abandoned[0].origin_step == 20 and [p[0] for p in abandoned[0].train] == [30, 40, 50]


def test_history_keeps_the_abandoned_branch_dimmed_with_the_rollback_marked(tmp_path: Path) -> None:
    run = rolled_back_run(tmp_path)
    h = RunHistory()
    for e in ev.read(run):
        h.apply(e)
    assert max(s for s, _ in h.train) == 400 and len(h.abandoned) == 1
    assert h.abandoned[0][0][0] == 200 and h.abandoned[0][-1][0] == 300  # joined to its origin
    chart = h.chart()
    assert [s.style for s in chart.extra] == [DIMMED]
    assert [m.char for m in chart.marks if m.step == 200].count("↺") == 1  # state and ack: one mark
    assert h.samples == [{"prompt": "def main(", "text": "):\n    return 0"}] and h.samples_step == 300


def test_runs_compare_prints_the_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    a = fake_run(runs, steps=300, name="20260101-120000-demo-abcd")
    b = rolled_back_run(runs)
    assert main(["--runs-dir", str(runs), "runs", "compare", a.name, "c0de", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    first, second = data["runs"]
    assert (first["steps"], second["steps"], second["branches_abandoned"]) == (300, 400, 1)
    assert second["best_eval_loss"] == 1.95 and second["best_step"] == 300 and second["tok_per_s"] == 10240.0  # the median interval
    assert data["differences"] == {"train.lr": [3e-4, 3e-5]}  # every setting, defaults included
    assert main(["--runs-dir", str(runs), "runs", "compare", a.name, b.name]) == 0
    table = capsys.readouterr().out
    assert "best eval loss" in table and "1.9500 @ 300" in table and "train.lr" in table
    assert main(["--runs-dir", str(runs), "runs", "compare", a.name]) == 2  # one run: said, not a traceback
    assert "name two runs or more" in capsys.readouterr().err
    assert summarize(a).abandoned == [] and spec_differences([a, a]) == {}


def test_notify_test_sends_to_every_url_and_fails_for_a_dead_one(tmp_path: Path, capsys, monkeypatch) -> None:
    from engine.track import notify

    monkeypatch.setattr(notify, "BACKOFF_S", 0.01)
    with webhook_receiver() as hook:
        spec = tmp_path / "n.toml"
        spec.write_text(f'name = "nt"\n[data]\npath = "stdlib"\n[notify]\nurls = ["{hook.url()}", '
                        f'"{hook.url("/a", scheme="json")}"]\n')
        assert main(["notify-test", str(spec), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["sent"] == {f"http://127.0.0.1:{hook.port}": None,
                                                               f"json://127.0.0.1:{hook.port}": None}
        assert [b["event"] for b in hook.bodies()] == ["test"] and "nt" in hook.bodies("/a")[0]["title"]
        code = main(["notify-test", str(spec), "--set", 'notify.urls=["http://127.0.0.1:9/x"]'])
        assert code == 1 and "not sent to http://127.0.0.1:9" in capsys.readouterr().out


def dashboard_app(run: Path):
    return make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), attach=str(run))


async def test_dashboard_shows_samples_and_the_tensorboard_command(tmp_path: Path) -> None:
    run = rolled_back_run(tmp_path)
    (run / "tb").mkdir()
    app = dashboard_app(run)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.history.step == 400)
        await pilot.pause()
        text = screen_text(app)
        assert "samples at step 300" in text and "def main( → ): return 0" in text
        assert "TensorBoard: tensorboard --logdir" in text and "rescued-c0de/tb" in text.replace("\n", "")


def test_snapshot_dashboard_chart_with_a_dimmed_branch(snap_compare, tmp_path: Path) -> None:
    run = rolled_back_run(tmp_path)
    app = dashboard_app(run)

    async def loaded(pilot) -> None:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.history.step == 400
                         and app.screen.gpus)

    assert snap_compare(app, terminal_size=(100, 30), run_before=loaded)


def test_snapshot_compare_view(snap_compare, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a = fake_run(runs, steps=300, name="20260101-120000-demo-abcd")
    b = rolled_back_run(runs)
    app = make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), runs_dir=str(runs))

    async def opened(pilot) -> None:
        await pilot.pause()
        app.push_screen(CompareScreen([a, b]))
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.summaries)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 36), run_before=opened)


async def test_runs_screen_compares_marked_runs(tmp_path: Path) -> None:
    from tui.screens.runs import RunsScreen

    runs = tmp_path / "runs"
    fake_run(runs, steps=300, name="20260101-120000-demo-abcd")
    rolled_back_run(runs)
    app = make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), runs_dir=str(runs))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.summaries)
        await pilot.pause()
        assert len(app.screen.runs) == 2
        assert "rolled-back branches" in screen_text(app)
