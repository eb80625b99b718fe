"""The dashboard's export key: offered once a run has finished, a modal for the format, the export in a thread
(the function `llm-wizard export` calls) and a notification naming the folder."""

from __future__ import annotations

import json

from export_helpers import trained_run
from tui_helpers import fake_run, fixed_report, wait_until

from engine.machine.fake_nvml import fixture
from engine.serve import gguf
from tui.app import make_app
from tui.modals.export import ExportModal
from tui.screens.dashboard import DashboardScreen


def dashboard_app(run):
    return make_app(hardware=fixed_report("2xL4"), nvml=fixture("2xL4"), attach=str(run))


async def test_export_is_offered_only_when_finished_and_writes_the_merged_folder(tmp_path) -> None:
    running = fake_run(tmp_path / "live", steps=300, state="running")
    app = dashboard_app(running)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.history.step == 300)
        assert app.screen.check_action("export", ()) is False  # the weights still change: not in the footer
        await pilot.press("e")
        await pilot.pause()
        assert not isinstance(app.screen, ExportModal)
        status = json.loads((running / "status.json").read_text())
        (running / "status.json").write_text(json.dumps({**status, "state": "done"}))  # it ends while watched
        line = app.screen.query_one("#run-message")
        await wait_until(pilot, lambda: "e exports" in str(line.render()))
        assert app.screen.check_action("export", ()) is True

    run = trained_run(tmp_path, "llama", "lora")
    app = dashboard_app(run)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.history.state == "done")
        dashboard = app.screen
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportModal))
        await pilot.press("enter")  # merged, highlighted first
        await pilot.press("enter")  # no Hub repo: confirm
        out = run / "export" / "merged"
        await wait_until(pilot, lambda: not dashboard.exporting and out.is_dir(), timeout=120)
        await pilot.pause()
        assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
        assert (out / "tokenizer_config.json").is_file() and (out / "tokenizer.json").is_file()
        notes = [n.message for n in app._notifications]
        assert any(str(out) in m for m in notes), notes

        await pilot.press("e")  # again: it asks before replacing, and an error is a line, not a traceback
        await wait_until(pilot, lambda: isinstance(app.screen, ExportModal))
        app.screen.query_one("#export-push").value = "not a repo"
        await pilot.press("tab", "enter")
        await pilot.pause()
        assert "ORG/NAME" in str(app.screen.query_one("#export-error").render())


def test_snapshot_export_modal(snap_compare, tmp_path, monkeypatch) -> None:
    run = fake_run(tmp_path, steps=400, state="done")
    (run / "final").mkdir()
    (run / "final" / "adapter_config.json").write_text("{}")
    monkeypatch.setattr(gguf, "available", lambda: {"f16": None, "bf16": None, "q8_0": None,
                                                    "q4_k_m": "needs llama.cpp's quantizer (pip install llama-cpp-python)"})
    app = dashboard_app(run)

    async def ask(pilot) -> None:
        await wait_until(pilot, lambda: app.screen.history.state == "done")
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportModal))
        await pilot.press("down", "down")  # gguf: its types appear, q4_k_m disabled with the reason
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=ask)
