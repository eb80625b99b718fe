"""The wizard's steps driven with keys: hardware to review without launching (fast), one snapshot
per step, and the choices turned into a spec the run engine accepts."""

from __future__ import annotations

import pytest
from tui_helpers import fixed_report, screen_text, wait_until

from engine.spec import from_dict
from tui.app import make_app
from tui.screens.checks import ChecksScreen
from tui.screens.dataset import DatasetScreen
from tui.screens.model import ModelScreen, scratch_parameters
from tui.screens.options import OptionsScreen
from tui.screens.review import ReviewScreen
from tui.screens.technique import TechniqueScreen
from tui.techniques import recommend
from tui.wizard import Choices, apply_changes, spec_dict

CORPUS = "corpus.txt"


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small text corpus in the current folder (relative paths keep snapshots machine-free)."""
    monkeypatch.chdir(tmp_path)
    lines = [f"def function_{i}(x):\n    return x * {i} + {i % 7}  # line {i}\n" for i in range(400)]
    (tmp_path / CORPUS).write_text("".join(lines))
    return tmp_path / CORPUS


def wizard_app(fixture="2xL4", dataset=CORPUS):
    app = make_app(hardware=fixed_report(fixture), show_runs=False)
    app.choices.dataset = dataset
    return app


async def test_keys_walk_every_step_and_back(corpus) -> None:
    app = wizard_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter")
        assert isinstance(app.screen, TechniqueScreen)
        assert "LoRA ★" in screen_text(app)  # 24 GiB free per GPU: LoRA is recommended
        await pilot.press("enter")  # scratch stays chosen (the default)
        assert isinstance(app.screen, ModelScreen)
        await pilot.press("down")  # size 10M
        assert app.choices.size == "10M"
        await pilot.pause()
        assert app.choices.extra["model_params"] == scratch_parameters("gpt2", "10M", 257, 128)
        assert "M parameters" in screen_text(app)
        await pilot.press("up", "enter")
        assert isinstance(app.screen, DatasetScreen)
        await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
        assert app.choices.extra["data_tokens"] == corpus.stat().st_size + 1  # bytes and one end-of-text
        await pilot.pause()
        assert "def function_0(x):" in screen_text(app)
        await pilot.press("enter")
        assert isinstance(app.screen, ChecksScreen)
        await wait_until(pilot, lambda: "estimate" in app.choices.extra)
        await pilot.pause()
        text = screen_text(app)
        assert "GPU 0" in text and "GPU 1" in text and "fits" in text and "Book:" in text and "Data:" in text
        await pilot.press("enter")
        assert isinstance(app.screen, OptionsScreen)
        before = app.choices.extra["estimate"].total_bytes
        await pilot.press("right", "right")  # batch 8 -> 32: more activations, a larger estimate
        assert app.choices.batch_size == 32
        await wait_until(pilot, lambda: app.choices.extra["estimate"].total_bytes > before)
        await pilot.press("enter")
        assert isinstance(app.screen, ReviewScreen)
        await pilot.pause()
        assert "batch_size = 32" in app.screen.toml and "llm-wizard train ./scratch.toml" in screen_text(app)
        await pilot.press("s")
        saved = from_dict(__import__("tomllib").loads((corpus.parent / "scratch.toml").read_text()))
        assert saved.train.batch_size == 32
        # a tiny model fits one L4: the proposal is DDP over both GPUs
        assert (saved.distributed.num_processes, saved.distributed.strategy) == (2, "ddp")
        for screen in (OptionsScreen, ChecksScreen, DatasetScreen, ModelScreen, TechniqueScreen):
            await pilot.press("escape")
            assert isinstance(app.screen, screen)


async def test_checks_suggestion_applies_and_bars_update(corpus) -> None:
    app = wizard_app()
    app.choices.size = "1B"
    app.choices.batch_size = 64
    app.choices.seq_len = 2048
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("enter", "enter", "enter")  # technique, model, dataset
        await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
        await pilot.press("enter")
        await wait_until(pilot, lambda: "estimate" in app.choices.extra)
        await pilot.pause()
        est = app.choices.extra["estimate"]
        assert est.gpus[0].verdict == "no" and est.suggestions and "does not fit" in screen_text(app)
        applicable = next(i for i, s in enumerate(est.suggestions) if "GPUs" not in s.change)
        app.screen.query_one("#suggestions").highlighted = applicable
        await pilot.press("space")
        await wait_until(pilot, lambda: "estimate" in app.choices.extra and app.choices.extra["estimate"] is not est)
        assert app.choices.extra["estimate"].total_bytes < est.total_bytes


async def test_model_folder_counts_parameters_from_config(tmp_path) -> None:
    from engine.models.architectures import build_config, shape_for

    folder = tmp_path / "m"
    build_config("llama", shape_for("tiny"), vocab_size=300, max_seq_len=64).save_pretrained(folder)
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False)
    app.choices.technique = "lora"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter", "enter")
        assert isinstance(app.screen, ModelScreen)
        assert not app.screen.ready()
        field = app.screen.query_one("#model-path")
        field.insert_text_at_cursor(str(folder))  # as a paste: one change, not a key per character
        await wait_until(pilot, lambda: app.choices.extra.get("model_params") is not None)
        assert app.choices.extra["model_params"] == 2 * 300 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 64 + 3 * 64 * 256 + 128) + 64
        await pilot.press("ctrl+a", "ctrl+k")
        field.insert_text_at_cursor(str(tmp_path))
        await wait_until(pilot, lambda: "no config.json" in " ".join(screen_text(app).split()))
        assert "model_params" not in app.choices.extra and not app.screen.ready()


def test_recommendation_follows_hardware_and_data() -> None:
    assert recommend(fixed_report("none"))[0] == "scratch"
    assert recommend(fixed_report("2xL4"))[0] == "lora"
    assert recommend(fixed_report("2xL4"), data_tokens=5000)[0] == "prompt-tuning"


def test_scratch_parameter_count_matches_the_model() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models.architectures import build_config, shape_for

    for arch in ("gpt2", "llama"):
        cfg = build_config(arch, shape_for("tiny"), vocab_size=257, max_seq_len=128)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        assert scratch_parameters(arch, "tiny", 257, 128) == sum(p.numel() for p in model.parameters())


def test_choices_make_a_valid_spec_and_suggestions_apply(tmp_path) -> None:
    c = Choices(dataset="stdlib", batch_size=16, max_steps=200, precision="bf16", optimizer="adamw8bit")
    spec = from_dict(spec_dict(c))
    assert (spec.train.precision, spec.train.optimizer, spec.train.batch_size) == ("bf16", "adamw8bit", 16)
    assert spec.tokenizer.kind == "byte" and spec.data.path == "stdlib"
    assert apply_changes(c, {"train.batch_size": 4, "train.grad_accum": 4}, gpus=0, cuda=False) is None
    assert (c.batch_size, c.grad_accum) == (4, 4)
    assert apply_changes(c, {"train.gradient_checkpointing": True}, gpus=0, cuda=False) is None and c.grad_checkpointing
    fsdp8 = {"distributed.num_processes": 8, "distributed.strategy": "fsdp"}
    assert "needs 8 GPUs; this machine has 2" == apply_changes(c, fsdp8, gpus=2, cuda=True)
    assert "no CUDA" in apply_changes(c, fsdp8, gpus=8, cuda=False)
    assert (c.num_processes, c.strategy, c.layout_chosen) == (1, "ddp", False)  # refused: nothing changed
    assert apply_changes(c, fsdp8, gpus=8, cuda=True) is None and (c.num_processes, c.strategy) == (8, "fsdp")
    assert c.layout_chosen  # the checks step proposes no other layout after this
    spec = from_dict(spec_dict(c))
    assert (spec.distributed.num_processes, spec.distributed.strategy) == (8, "fsdp")


# --- one snapshot per step, at 80x24 and a wide size ---------------------------------------------------

SIZES = [(80, 24), (120, 36)]


async def _to_step(pilot, n: int) -> None:
    app = pilot.app
    for _ in range(n):
        await pilot.press("enter")
        screen = app.screen
        if isinstance(screen, DatasetScreen):
            await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
        if isinstance(screen, (ChecksScreen, OptionsScreen)):
            await wait_until(pilot, lambda: "estimate" in app.choices.extra)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6])
def test_snapshot_step(snap_compare, corpus, step, size) -> None:
    dataset = "stdlib" if step == 6 else CORPUS  # review: a spec without machine paths
    assert snap_compare(wizard_app(dataset=dataset), terminal_size=size, run_before=lambda p: _to_step(p, step))
