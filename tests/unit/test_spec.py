"""The run spec: defaults round-trip through TOML, bad values name their field, presets validate
(RELIABILITY M4, M7)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine import spec
from engine.errors import UserError

PRESETS = sorted((Path(__file__).parents[2] / "presets").glob("*.toml"))


def test_defaults_round_trip_through_toml() -> None:
    s = spec.RunSpec()
    text = spec.to_toml(s)
    assert spec.from_dict(tomllib.loads(text)) == s
    assert "# peak learning rate" in text  # help text travels as comments


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"train": {"batch_size": 0}}, "train.batch_size", "positive"),
    ({"train": {"lr": -1.0}}, "train.lr", "positive"),
    ({"train": {"lr": float("nan")}}, "train.lr", "number"),
    ({"train": {"grad_accum": 0}}, "train.grad_accum", "positive"),
    ({"train": {"epochs": -3.0}}, "train.epochs", ">= 0"),
    ({"train": {"max_steps": 10, "warmup_steps": 10}}, "train.warmup_steps", "not below"),
    ({"train": {"precision": "fp8"}}, "train.precision", "fp32, bf16"),
    ({"train": {"batch_size": 2.5}}, "train.batch_size", "whole number"),
    ({"train": {"batchsize": 4}}, "train.batchsize", "did you mean 'batch_size'"),
    ({"technique": "dreambooth"}, "technique", "scratch"),
    ({"data": {"path": "/no/such/file.txt"}}, "data.path", "not found"),
    ({"model": {"size": "huge"}}, "model.size", "tiny"),
    ({"checkpoint": {"keep": 1}}, "checkpoint.keep", "at least 2"),
    ({"log": {"every": 0}}, "log.every", "positive"),
    ({"eval": "often"}, "eval", "table"),
    ({"wat": 1}, "wat", "unknown"),
    ({"seed": -1}, "seed", "from 0 to 4294967295"),
    ({"train": {"lr": 1e300}}, "train.lr", "from 1e-10 to 10"),
    ({"seed": 2 ** 32}, "seed", "from 0 to 4294967295"),
])
def test_bad_values_name_the_field(data: dict, field: str, words: str) -> None:
    with pytest.raises(UserError) as info:
        spec.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value) and words in str(info.value)


def test_relative_paths_are_taken_from_the_spec_folder_and_overrides_apply(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("hello\n")
    (tmp_path / "s.toml").write_text('[data]\npath = "data.txt"\n[train]\nmax_steps = 5\n')
    s = spec.load(tmp_path / "s.toml", ["train.max_steps=7", "train.lr=0.01", "name=abc"])
    assert s.data.path == str(tmp_path / "data.txt")
    assert (s.train.max_steps, s.train.lr, s.name) == (7, 0.01, "abc")


def test_a_toml_date_or_a_key_under_a_value_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("seed = 2024-01-01\n")
    with pytest.raises(UserError, match=r"seed: a date or time \(2024-01-01\)"):
        spec.load(tmp_path / "s.toml")
    (tmp_path / "s.toml").write_text("[train]\nlr = 0.001\n")
    with pytest.raises(UserError, match=r"train.lr is a value \(0.001\), not a table"):
        spec.load(tmp_path / "s.toml", ["train.lr.x=1"])


def test_not_toml_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("[train\nlr = ")
    with pytest.raises(UserError, match="not valid TOML"):
        spec.load(tmp_path / "s.toml")


def test_fingerprint_ignores_what_may_change_on_resume() -> None:
    a = spec.RunSpec()
    b = spec.from_dict({"train": {"max_steps": 999, "lr": 0.1}, "log": {"every": 3}})
    c = spec.from_dict({"train": {"seq_len": 64}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_every_field_has_help() -> None:
    for section in ["", *spec.SECTIONS]:
        cls = spec.RunSpec if not section else spec.SECTIONS[section]
        for f in spec.fields(cls):
            if f.name not in spec.SECTIONS:
                assert spec.help_for(f"{section}.{f.name}" if section else f.name), f.name


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_validates(preset: Path) -> None:
    s = spec.load(preset)
    assert s.technique in spec.TECHNIQUES
    assert tomllib.loads(spec.to_toml(s))  # writes back as valid TOML


def test_tiny_and_demo_presets_exist() -> None:
    assert {"tiny", "demo"} <= {p.stem for p in PRESETS}


def test_settings_a_pretrained_model_does_not_read_are_named() -> None:
    """With model.path the model's own shape and tokenizer are used: [tokenizer] kind/vocab_size and the scratch
    shape of [model], changed from their defaults, are named (train prints them) instead of passing silently."""
    from engine.techniques.base import unused_settings

    data = {"technique": "full", "model": {"path": "org/model", "layers": 2}, "tokenizer": {"kind": "byte", "path": "t"}}
    assert unused_settings(spec.from_dict(data)) == ["model.layers = 2", "tokenizer.kind = 'byte'"]
    assert unused_settings(spec.from_dict({"technique": "full", "model": {"path": "org/model"}})) == []
    assert unused_settings(spec.from_dict({"model": {"layers": 2}, "tokenizer": {"kind": "byte"}})) == []  # scratch
