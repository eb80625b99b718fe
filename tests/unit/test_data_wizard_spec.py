"""The spec the wizard writes for each data layout trains the data the Data step showed: Choices -> spec_dict ->
from_dict -> to_toml -> load gives the same prepared report as the wizard's own source, and one saved spec
trains from `llm-wizard train SPEC --foreground`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chat_helpers import many, qwen2_model, sharegpt, slack_export, train_bpe, write_jsonl
from engine import spec as spec_mod
from tui.corpus import apply_mapping, describe, make_source, parse_mapping
from tui.wizard import Choices, spec_dict


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("wizard-data")
    model = qwen2_model(root / "model", train_bpe(root / "tok"))
    convs = many(24)
    files = {
        "messages": write_jsonl(root / "messages.jsonl", [{"messages": c} for c in convs]),
        "sharegpt": write_jsonl(root / "sharegpt.jsonl", [sharegpt(c) for c in convs]),
        "slack": slack_export(root / "slack"),
    }
    pairs = [(c[-2]["content"], c[-1]["content"]) for c in convs]
    alpaca = root / "alpaca.json"  # Stanford Alpaca's layout: one JSON array, `input` empty or not
    alpaca.write_text(json.dumps([{"instruction": p, "input": "context" if k % 3 else "", "output": r}
                                  for k, (p, r) in enumerate(pairs)], indent=2))
    files["alpaca"] = alpaca
    table = root / "pairs.csv"  # columns no detector knows: the mapping names them
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["q", "a", "sys"])
        writer.writerows([(p, r, "Be brief.") for p, r in pairs])
    files["prompt_response"] = table
    return SimpleNamespace(root=root, model=model, files=files)


# (layout, the Data step's settings for it, the format it must be read as)
CASES = [
    ("messages", {"train_on": "last_assistant"}, "messages"),
    ("sharegpt", {"template": "chatml"}, "sharegpt"),
    ("alpaca", {}, "alpaca"),
    ("prompt_response", {"mapping": "prompt=q, response=a, system=sys", "train_on": "all"}, "prompt_response"),
    ("slack", {"slack_user": "U1"}, "slack"),
]


def choices_for(chat: SimpleNamespace, layout: str, settings: dict[str, str]) -> Choices:
    """The Choices the Data step leaves for this data (technique and model chosen before it)."""
    c = Choices(technique="full", model=str(chat.model), dataset=str(chat.files[layout]), seq_len=96, max_steps=2)
    settings = dict(settings)
    if "mapping" in settings:
        apply_mapping(c, parse_mapping(settings.pop("mapping")))
    for key, value in settings.items():
        setattr(c, key, value)
    return c


def report_of(source, chat: SimpleNamespace, seq_len: int):  # noqa: ANN001, ANN201
    from transformers import AutoTokenizer

    from engine.data.prepare import prepare

    return prepare(source, AutoTokenizer.from_pretrained(chat.model), seq_len).report


@pytest.mark.parametrize(("layout", "settings", "fmt"), CASES, ids=[c[0] for c in CASES])
def test_the_wizard_spec_reads_the_data_the_step_showed(tmp_path: Path, chat: SimpleNamespace, layout: str,
                                                       settings: dict[str, str], fmt: str) -> None:
    from engine.data.sources import DataSource

    c = choices_for(chat, layout, settings)
    assert describe(make_source(c)).format == fmt
    shown = report_of(make_source(c), chat, c.seq_len)
    path = tmp_path / "spec.toml"
    path.write_text(spec_mod.to_toml(spec_mod.from_dict(spec_dict(c))))
    loaded = spec_mod.load(path)
    again = report_of(DataSource.from_spec(loaded.data), chat, loaded.train.seq_len)
    assert again == shown and again.format == fmt and again.examples > 0 and again.trained_tokens > 0
    for key, value in settings.items():  # every setting the step made is in the saved spec
        if key != "mapping":
            assert getattr(loaded.data, key) == value, key
    if layout == "prompt_response":
        assert (loaded.data.prompt_column, loaded.data.response_column, loaded.data.system_column) == ("q", "a", "sys")


def test_defaults_stay_out_of_the_spec(chat: SimpleNamespace) -> None:
    data = spec_dict(choices_for(chat, "messages", {}))["data"]
    assert data == {"path": str(chat.files["messages"])}


@pytest.mark.slow
def test_a_saved_wizard_spec_trains_again_from_the_command_line(tmp_path: Path, chat: SimpleNamespace) -> None:
    c = choices_for(chat, "sharegpt", {"train_on": "last_assistant"})
    c.batch_size, c.warmup_steps, c.eval_every, c.checkpoint_every = 2, 0, 2, 2
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(spec_mod.to_toml(spec_mod.from_dict(spec_dict(c))))
    runs = tmp_path / "runs"
    env = {**os.environ, "LLM_WIZARD_RUNS": str(runs)}
    done = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(spec_path), "--foreground"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = runs.iterdir()
    assert (run / "final").is_dir()
    assert spec_mod.load(run / "spec.toml").data == spec_mod.load(spec_path).data
