"""The wizard's multi-GPU layout (issue 7): proposed from the probed GPUs (fake NVML) and the estimate,
changeable by the user (strategies this machine cannot run are disabled with the reason), written into
the spec, in the Textual wizard and in --plain; the batch finder setting; find_batch = true/false."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from textual.widgets import OptionList
from tui_helpers import fixed_report, screen_text, wait_until

from engine.errors import UserError
from engine.estimate.memory import estimate
from engine.machine.strategies import zero_available
from engine.estimate.layout import gib, propose
from engine.spec import from_dict, load
from tui.app import make_app
from tui.modals.choose import ChooseModal
from tui.plain import Prompts, ask_layout
from tui.screens.checks import ChecksScreen
from tui.screens.options import OptionsScreen, visible_settings
from tui.screens.review import ReviewScreen
from tui.wizard import Choices, estimate_request, settle, spec_dict

GiB = 1 << 30
# Llama-2-13B's shape: a full fine-tune needs about 16 bytes a parameter, far more than one H100.
LLAMA_13B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 5120,
             "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
             "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.fixture
def big_model(tmp_path):
    """A 13B config only: the estimator needs no weights."""
    (tmp_path / "13b").mkdir()
    (tmp_path / "13b" / "config.json").write_text(json.dumps(LLAMA_13B))
    return tmp_path / "13b"


def machine(name: str, *, cuda: bool):
    report = fixed_report(name)
    return dataclasses.replace(report, torch=dataclasses.replace(report.torch, cuda_available=cuda))


def gpus_of(report):
    return [(g.index, g.name, g.memory_free_bytes) for g in report.gpus]


def test_too_big_for_one_h100_gets_fsdp_with_both_numbers(big_model) -> None:
    gpus = gpus_of(machine("8xH100", cuda=True))
    req = estimate_request(Choices(technique="full", model=str(big_model)))
    p = propose(req, gpus, cuda=True)
    ddp = estimate(dataclasses.replace(req, gpus=8, strategy="ddp"), gpus=gpus, with_suggestions=False).total_bytes
    fsdp = estimate(dataclasses.replace(req, gpus=8, strategy="fsdp"), gpus=gpus, with_suggestions=False).total_bytes
    free = min(g[2] for g in gpus)
    assert ddp > free > fsdp  # the premise: a DDP copy does not fit one GPU, an eighth of it does
    assert (p.kind, p.num_processes, p.strategy) == ("sharded", 8, "fsdp")
    assert p.message == (f"DDP {ddp / GiB:.0f} GiB/GPU: does not fit {free / GiB:.0f} GiB; "
                         f"FSDP x8: {fsdp / GiB:.0f} GiB/GPU fits")
    # no CUDA (and no DeepSpeed here): nothing that fits can run; it says so, with the reason
    none = propose(req, gpus, cuda=False)
    assert none.kind == "none" and none.strategy == "ddp" and "Nothing fits" in none.message
    assert "(no CUDA)" in none.message and "See the suggestions" in none.message
    if not zero_available():
        assert "ZeRO-3 x8" in none.message and "DeepSpeed is not installed" in none.message


def test_tiny_model_gets_ddp_over_all_gpus_and_no_gpu_gets_one_process() -> None:
    tiny = estimate_request(Choices())
    p = propose(tiny, gpus_of(fixed_report("2xL4")), cuda=False)
    assert (p.kind, p.num_processes, p.strategy) == ("ddp", 2, "ddp") and "DDP x2" in p.message
    assert [o.strategy for o in p.options] == ["ddp", "fsdp", "zero2", "zero3"]
    assert p.options[1].unavailable == "no CUDA"
    cpu = propose(tiny, [], cuda=False)
    assert (cpu.kind, cpu.num_processes, cpu.options) == ("cpu", 1, ())
    c = Choices()
    keys = [s.key for s in visible_settings(c, fixed_report("none"))]
    assert "num_processes" not in keys and "strategy" not in keys and "find_batch" in keys
    assert "distributed" not in spec_dict(c)


def test_options_offer_only_what_this_machine_runs() -> None:
    c = Choices(num_processes=8)
    by_key = {s.key: s for s in visible_settings(c, machine("8xH100", cuda=False))}
    assert by_key["num_processes"].values == (1, 2, 4, 8)
    assert by_key["strategy"].values == ("ddp",)  # no CUDA: the wizard shards over GPUs only
    assert by_key["find_batch"].values == ("auto", "off")  # the spec refuses `on` with several processes
    cuda = {s.key: s for s in visible_settings(c, machine("8xH100", cuda=True))}
    assert cuda["strategy"].values == (("ddp", "fsdp", "zero2", "zero3") if zero_available() else ("ddp", "fsdp"))
    one = {s.key: s for s in visible_settings(Choices(), machine("8xH100", cuda=True))}
    assert "strategy" not in one and one["find_batch"].values == ("auto", "on", "off")
    assert from_dict(spec_dict(Choices(find_batch="off"))).train.find_batch == "off"  # the wizard writes it
    c.find_batch = "on"
    assert settle(c) and c.find_batch == "auto"
    assert from_dict(spec_dict(c)).train.find_batch == "auto"


def test_find_batch_reads_toml_booleans(tmp_path) -> None:
    for value, expected in (("true", "on"), ("false", "off"), ('"auto"', "auto")):
        path = tmp_path / "run.toml"
        path.write_text(f'technique = "scratch"\nname = "fb"\n[train]\nmax_steps = 10\nfind_batch = {value}\n')
        assert load(path).train.find_batch == expected
    assert from_dict({"train": {"find_batch": True}}).train.find_batch == "on"
    with pytest.raises(UserError, match="train.find_batch"):
        from_dict({"train": {"find_batch": "maybe"}})


def test_plain_layout_proposes_fsdp_and_skips_disabled_strategies(big_model, capsys) -> None:
    gpus = gpus_of(machine("8xH100", cuda=True))
    c = Choices(technique="full", model=str(big_model))
    with create_pipe_input() as pipe:
        pipe.send_text("\r\r\r")  # GPUs: the proposed 8; machines: 1; strategy: the proposed FSDP
        ask_layout(Prompts(input=pipe, output=DummyOutput()), c, gpus, cuda=True)
    assert (c.num_processes, c.strategy, c.layout_chosen) == (8, "fsdp", True)
    assert "FSDP x8" in capsys.readouterr().out
    spec = from_dict(spec_dict(c))
    assert (spec.distributed.num_processes, spec.distributed.strategy) == (8, "fsdp")
    c = Choices(technique="full", model=str(big_model))
    with create_pipe_input() as pipe:
        pipe.send_text("\r\r" + "\x1b[B" * 3 + "\r")  # no CUDA: moving down passes over the disabled ones
        ask_layout(Prompts(input=pipe, output=DummyOutput()), c, gpus, cuda=False)
    assert c.num_processes == 8 and c.strategy in (("ddp", "zero2", "zero3") if zero_available() else ("ddp",))
    assert "Nothing fits" in capsys.readouterr().out and c.strategy != "fsdp"


async def test_wizard_proposes_fsdp_on_eight_h100s_and_writes_it(big_model, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("def f(x):\n    return x + 1\n" * 300)
    report = machine("8xH100", cuda=True)
    app = make_app(hardware=report, show_runs=False)
    app.choices.technique, app.choices.model, app.choices.dataset = "full", str(big_model), "corpus.txt"
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("enter", "enter")  # hardware, technique (full, set above)
        await wait_until(pilot, lambda: app.choices.extra.get("model_params") is not None)
        await pilot.press("enter")
        await wait_until(pilot, lambda: "data_tokens" in app.choices.extra)
        await pilot.press("enter")
        assert isinstance(app.screen, ChecksScreen)
        await wait_until(pilot, lambda: "estimate" in app.choices.extra)
        await pilot.pause()
        c = app.choices
        assert (c.num_processes, c.strategy) == (8, "fsdp")
        expected = propose(estimate_request(dataclasses.replace(c, num_processes=1)), gpus_of(report), cuda=True)
        text = " ".join(screen_text(app).split())
        assert f"Layout (proposed): {expected.message}" in text
        assert c.extra["estimate"].gpu_count == 8 and c.extra["estimate"].gpus[0].verdict != "no"
        await pilot.press("enter")
        assert isinstance(app.screen, OptionsScreen)
        await pilot.pause()
        await wait_until(pilot, lambda: bool(app.screen.layouts))
        keys = [s.key for s in app.screen.settings()]
        app.screen.query_one("#settings").highlighted = keys.index("find_batch")
        await pilot.pause()
        text = " ".join(screen_text(app).split())
        assert "batch finder" in text and "real steps find the largest micro-batch that fits" in text
        app.screen.query_one("#settings").highlighted = keys.index("strategy")
        await pilot.pause()
        assert "fsdp: weights, gradients" in " ".join(screen_text(app).split())  # the hint line (engine/vocabulary.py)
        layouts = {o.strategy: o for o in app.screen.layouts}
        await pilot.press("space")  # the strategy as a list: every one, the unavailable disabled with the reason
        assert isinstance(app.screen, ChooseModal)
        listed = app.screen.query_one(OptionList)
        options = [listed.get_option_at_index(i) for i in range(listed.option_count)]
        assert [o.disabled for o in options] == [False, False, not zero_available(), not zero_available()]
        prompts = [str(o.prompt) for o in options]
        assert f"{gib(layouts['ddp'].total_bytes)}/GPU does not fit" in prompts[0]
        assert f"{gib(layouts['fsdp'].total_bytes)}/GPU fits" in prompts[1]
        if not zero_available():
            assert all("(off: DeepSpeed is not installed)" in p for p in prompts[2:])
        await pilot.press("up", "enter")  # fsdp -> ddp: the user's choice, which no longer fits
        assert isinstance(app.screen, OptionsScreen)
        assert (c.strategy, c.layout_chosen) == ("ddp", True)
        await wait_until(pilot, lambda: c.extra["estimate"].gpus[0].verdict == "no")
        await pilot.press("right")
        await wait_until(pilot, lambda: c.extra["estimate"].gpus[0].verdict != "no")
        text = " ".join(screen_text(app).split())
        assert "Strategies: DDP" in text and "FSDP" in text
        await pilot.press("enter")
        assert isinstance(app.screen, ReviewScreen)
        await pilot.pause()
        spec = from_dict(tomllib.loads(app.screen.toml))
    assert (spec.distributed.num_processes, spec.distributed.strategy) == (8, "fsdp")
