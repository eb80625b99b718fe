"""The Model step with a Hub id, against the Hub-compatible server on 127.0.0.1: size on disk, parameters,
gated or not, cached or not, and a gated model's way in, all read in the screen's worker thread."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import fixed_report, screen_text, wait_until

from hub_server import HubServer, go_online, tiny_model
from tui.app import make_app
from tui.screens.model import ModelScreen


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tuihub"))


async def test_the_model_step_shows_what_the_hub_says_of_an_id(model_folder: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer() as hub:
        hub.add_folder("org/tiny", model_folder, parameters=98765)
        hub.add_folder("org/gated", model_folder, gated="manual")
        go_online(monkeypatch, hub)
        app = make_app(hardware=fixed_report("2xL4"), show_runs=False)
        app.choices.technique = "lora"
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("enter", "enter")
            assert isinstance(app.screen, ModelScreen)
            field = app.screen.query_one("#model-path")
            field.insert_text_at_cursor("org/tiny")
            await wait_until(pilot, lambda: app.choices.extra.get("model_params") is not None, timeout=30)
            text = " ".join(screen_text(app).split())
            assert "KB on disk" in text and "98.77K parameters (Hub)" in text and "not gated" in text
            assert "not cached" in text and app.screen.ready()
            await pilot.press("ctrl+a", "ctrl+k")
            field.insert_text_at_cursor("org/gated")
            await wait_until(pilot, lambda: "hf auth login" in " ".join(screen_text(app).split()), timeout=30)
            text = " ".join(screen_text(app).split())
            assert "org/gated" in text and "gated" in text and not app.screen.ready()
