"""The wizard writes what each technique reads: option names, defaults and optimizer names equal the
engine's (engine/techniques/*.py DEFAULTS, engine.spec.TECHNIQUE_DEFAULTS), the spec it writes for LoRA,
prompt tuning and distillation passes that technique's own preflight/option validation, and a launch
the technique refuses is refused on the review screen with its message, before any run folder exists."""

from __future__ import annotations

import tomllib

import pytest
from finetune_helpers import base_model, corpus_and_tokenizer
from tui_helpers import fixed_report, screen_text, wait_until

from engine import spec as spec_mod
from engine.techniques import distill, lora, openai as hosted_openai, prompt_tuning
from tui.app import make_app
from tui.screens.checks import ChecksScreen
from tui.screens.dataset import DatasetScreen
from tui.screens.model import ModelScreen
from tui.screens.options import OptionsScreen
from tui.screens.review import ReviewScreen
from tui.screens.options import SETTINGS
from tui.wizard import TECHNIQUES, Choices, DEFAULT_LR, apply_changes, spec_dict

MODULES = {"lora": lora, "qlora": lora, "prompt-tuning": prompt_tuning, "distill": distill, "openai": hosted_openai}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny GPT-2 base, a teacher with the same tokenizer, one with another tokenizer, and a corpus."""
    root = tmp_path_factory.mktemp("wizard-models")
    corpus, tok = corpus_and_tokenizer(root, lines=300, vocab_size=320)
    (root / "other").mkdir()
    _, other_tok = corpus_and_tokenizer(root / "other", lines=200, vocab_size=290)  # other ids for the same text
    return {"corpus": corpus, "base": base_model("gpt2", tok, root / "base"),
            "teacher": base_model("gpt2", tok, root / "teacher", layers=3, seed=1),
            "other": base_model("gpt2", other_tok, root / "other-teacher")}


def test_defaults_and_names_are_the_engines() -> None:
    for technique, defaults in spec_mod.TECHNIQUE_DEFAULTS.items():
        train = spec_mod.from_dict(spec_dict(Choices(technique=technique, model="m", teacher="t"))).train
        assert train.lr == defaults["lr"] == DEFAULT_LR[technique]
        assert train.optimizer == defaults.get("optimizer", "adamw"), technique
    for setting in SETTINGS:  # the wizard offers only what the spec takes (engine/vocabulary.py)
        if setting.key in ("optimizer", "precision", "strategy"):
            assert set(setting.values) <= set({"optimizer": spec_mod.OPTIMIZERS, "precision": spec_mod.PRECISIONS,
                                               "strategy": spec_mod.STRATEGIES}[setting.key]), setting.key
    c = Choices()
    assert c.lora_rank == lora.DEFAULTS["lora_rank"]
    assert c.num_virtual_tokens == prompt_tuning.DEFAULTS["num_virtual_tokens"]
    for technique in TECHNIQUES:  # every option the wizard writes is one the technique knows
        options = spec_dict(Choices(technique=technique, model="m", teacher="t")).get("options", {})
        assert set(options) <= set(getattr(MODULES.get(technique), "DEFAULTS", {})), technique
    assert spec_mod.from_dict(spec_dict(Choices(technique="qlora", model="m",
                                                optimizer="paged_adamw8bit"))).train.optimizer == "paged_adamw8bit"
    c = Choices()  # the engine cannot train adafactor: never written as another
    assert apply_changes(c, {"train.optimizer": "adafactor"}, gpus=0, cuda=False) and c.optimizer == ""
    assert apply_changes(c, {"train.precision": "bf16-pure"}, gpus=0, cuda=False) is None and \
        c.precision == "bf16-pure"  # pure bf16 trains: a suggestion of it is applied


def test_the_options_offer_pure_bf16_with_its_trade_off() -> None:
    (precision,) = [s for s in SETTINGS if s.key == "precision"]
    assert precision.values == ("fp32", "bf16", "fp16", "bf16-pure")
    hint = " ".join(precision.hint.split())
    assert "bf16-pure: pure bf16: weights, gradients and AdamW states all bf16" in hint
    assert "half the memory of fp32 weights + fp32 Adam" in hint and "lost to bf16 rounding" in hint
    assert "mixed bf16 is the safer default" in hint


async def _walk_to_review(pilot, technique: str, model: str, teacher: str = "",
                          setting: str | None = None) -> None:
    """Technique by keys, the model (and teacher) typed, then every step to the review; on the options
    step `setting` is moved one value to the right."""
    app = pilot.app
    await pilot.press("enter")  # hardware
    await pilot.press(*["down"] * TECHNIQUES.index(technique), "enter")
    assert app.choices.technique == technique and isinstance(app.screen, ModelScreen)
    app.screen.query_one("#model-path").insert_text_at_cursor(model)
    if teacher:
        app.screen.query_one("#teacher-path").insert_text_at_cursor(teacher)
    await wait_until(pilot, lambda: app.choices.extra.get("model_params") is not None)
    await pilot.press("enter")
    assert isinstance(app.screen, DatasetScreen)
    await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
    await pilot.press("enter")
    assert isinstance(app.screen, ChecksScreen)
    await wait_until(pilot, lambda: "estimate" in app.choices.extra)
    await pilot.press("enter")
    assert isinstance(app.screen, OptionsScreen)
    if setting:
        app.screen.query_one("#settings").highlighted = [s.key for s in app.screen.settings()].index(setting)
        await pilot.press("right")
    await pilot.press("enter")
    assert isinstance(app.screen, ReviewScreen)
    await pilot.pause()


@pytest.mark.parametrize(("technique", "setting", "written"), [
    ("lora", "lora_rank", {"lora_rank": 32}),
    ("prompt-tuning", "num_virtual_tokens", {"num_virtual_tokens": 20}),
    ("distill", None, {}),
])
async def test_written_spec_passes_the_techniques_checks(models, tmp_path, monkeypatch, technique, setting,
                                                         written) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False)
    app.choices.dataset = str(models["corpus"])
    async with app.run_test(size=(100, 30)) as pilot:
        await _walk_to_review(pilot, technique, str(models["base"]),
                              str(models["teacher"]) if technique == "distill" else "", setting)
        assert app.screen.toml is not None, app.screen.error
        spec = spec_mod.from_dict(tomllib.loads(app.screen.toml))
    if technique == "distill":
        written = {"teacher": str(models["teacher"])}
    assert spec.options == written
    module = MODULES[technique]
    validated = module.options(spec)  # the technique's own reading of the options: the values chosen
    assert {k: validated[k] for k in written} == written
    if hasattr(module, "preflight"):
        module.preflight(spec)  # raises UserError on a name or value the technique does not accept


async def test_launch_refused_with_the_techniques_message(models, tmp_path, monkeypatch) -> None:
    """A teacher whose tokenizer gives other ids: the review shows distill's refusal, no run is created."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False, runs_dir=str(runs))
    app.choices.dataset = str(models["corpus"])
    async with app.run_test(size=(100, 30)) as pilot:
        await _walk_to_review(pilot, "distill", str(models["base"]), str(models["other"]))
        assert app.screen.toml is not None  # a valid spec: only the technique's check can refuse it
        await pilot.press("enter")
        await wait_until(pilot, lambda: "Not launched" in screen_text(app), timeout=30)
        text = " ".join(screen_text(app).split())
        assert "options.teacher" in text or "tokenizer" in text
        assert isinstance(app.screen, ReviewScreen) and app.screen.ready()  # still here, free to change
    assert not runs.exists() or not any(runs.iterdir())


async def test_hosted_openai_goes_from_its_model_and_data_to_the_review(tmp_path, monkeypatch) -> None:
    """The hosted choice says its caveat, names the service's model (no local config read), skips the memory
    checks and local options, and writes a spec the technique accepts; the key is never shown."""
    from openai_helpers import chat_file

    from tui.screens.hosted import HostedScreen

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shown-1234")
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False)
    app.choices.dataset = str(chat_file(tmp_path, 12))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("enter")  # hardware
        await pilot.press(*["down"] * TECHNIQUES.index("openai"))
        await wait_until(pilot, lambda: "data leaves this machine" in " ".join(screen_text(app).split()))
        await pilot.press("enter")
        assert isinstance(app.screen, HostedScreen)
        text = " ".join(screen_text(app).split())
        assert "every trained token is billed" in text and "OPENAI_API_KEY is set" in text
        assert "sk-never-shown" not in text
        app.screen.query_one("#hosted-suffix").insert_text_at_cursor("bot")
        epochs = app.screen.query_one("#hosted-epochs")
        epochs.value = "0"
        await pilot.pause()
        assert not app.screen.ready()  # 0 epochs: Next does not apply
        epochs.value = "2"
        await pilot.pause()
        await pilot.press("enter")
        assert isinstance(app.screen, DatasetScreen)
        await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
        assert app.choices.extra["data_tokens"] > 12 * 10
        await pilot.press("enter")
        assert isinstance(app.screen, ReviewScreen)  # no memory checks, no local options
        await pilot.pause()
        assert app.screen.toml is not None, app.screen.error
        spec = spec_mod.from_dict(tomllib.loads(app.screen.toml))
    assert spec.technique == "openai" and spec.model.path == ""
    assert spec.options == {"model": hosted_openai.DEFAULTS["model"], "suffix": "bot", "n_epochs": 2}
    hosted_openai.preflight(spec)
