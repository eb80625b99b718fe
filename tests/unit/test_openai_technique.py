"""Hosted fine-tuning's pure parts: every chat and instruction layout as OpenAI's chat JSONL (untrained turns
weighted 0), what it refuses (plain text, train_on = all, under 10 examples), the price table, the options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data.sources import DataSource
from engine.errors import UserError
from engine.spec import DataSpec
from engine.techniques import openai as technique
from engine.techniques import openai_api, openai_files
from openai_helpers import chat_file, openai_spec


def _write(tmp_path: Path, rows: list[dict], **data: object) -> tuple[openai_files.Written, list[dict]]:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = DataSource.from_spec(DataSpec(path=str(path), **data))  # type: ignore[arg-type]
    written = openai_files.write_files(source, tmp_path / "out", model="gpt-4o-mini", train_on=str(data.get(
        "train_on", "assistant")), val_fraction=0.0, seed=0)
    return written, [json.loads(line) for line in written.train.read_text().splitlines()]


def test_sharegpt_and_alpaca_rows_become_openai_messages(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": f"hello {i}"}],
             "system": "Be kind."} for i in range(12)]
    written, out = _write(tmp_path, rows)
    assert written.examples == 12 and written.validation is None and written.tokens > 12 * 9
    assert out[3] == {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi 3"},
                                   {"role": "assistant", "content": "hello 3"}]}
    _, alpaca = _write(tmp_path, [{"instruction": "Add", "input": "1 and 2", "output": "3"}] * 10)
    assert alpaca[0]["messages"] == [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]


def test_untrained_turns_are_weighted_zero_and_last_assistant_keeps_the_last(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in chat_file(tmp_path, 10, "messages").read_text().splitlines()]
    _, out = _write(tmp_path, rows)
    assert [m.get("weight") for m in out[0]["messages"]] == [None, None, 0, None, None]  # OpenAI's weight survives
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}] * 10
    _, out = _write(tmp_path, rows, train_on="last_assistant")
    assert [m.get("weight") for m in out[0]["messages"]] == [None, 0, None, None]


def test_validation_split_is_seeded_and_keeps_the_minimum(tmp_path: Path) -> None:
    source = DataSource.from_spec(DataSpec(path=str(chat_file(tmp_path, 30))))
    a = openai_files.write_files(source, tmp_path / "a", model="gpt-4o-mini", train_on="assistant", val_fraction=0.2,
                                 seed=1)
    b = openai_files.write_files(source, tmp_path / "b", model="gpt-4o-mini", train_on="assistant", val_fraction=0.2,
                                 seed=1)
    assert (a.examples, a.val_examples) == (24, 6) and a.validation is not None
    assert a.validation.read_text() == b.validation.read_text()  # type: ignore[union-attr]
    small = openai_files.write_files(DataSource.from_spec(DataSpec(path=str(chat_file(tmp_path, 11)))),
                                     tmp_path / "c", model="gpt-4o-mini", train_on="assistant", val_fraction=0.2, seed=1)
    assert (small.examples, small.val_examples, small.validation) == (11, 0, None)  # 9 left would be refused


@pytest.mark.parametrize(("rows", "data", "words"), [
    ([{"text": "just prose"}] * 12, {}, "not plain text"),
    ([{"prompt": "p", "completion": "c"}] * 12, {"train_on": "all"}, "assistant's turns only"),
    ([{"prompt": "p", "completion": "c"}] * 9, {}, "at least 10"),
])
def test_data_openai_would_refuse_is_refused_here(tmp_path: Path, rows: list, data: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        _write(tmp_path, rows, **data)


def test_price_table_by_family_and_cost_estimate() -> None:
    assert openai_files.price("gpt-4o-mini-2024-07-18") == 3.0
    assert openai_files.price("gpt-4o-2024-08-06") == 25.0  # not mistaken for gpt-4o-mini
    assert openai_files.price("gpt-4.1-nano-2025-04-14") == 1.5
    assert openai_files.price("davinci-002") is None
    written = openai_files.Written(Path("t"), None, 100, 0, 1_000_000, "counted", 0)
    cost = openai_files.estimate(written, "gpt-4o-mini-2024-07-18", "auto")
    assert (cost.billed_tokens, cost.usd) == (3_000_000, 9.0)
    assert "estimated as 3" in cost.describe() and openai_files.PRICES_DATE in cost.describe()
    assert "no price known" in openai_files.estimate(written, "my-model", 2).describe()


@pytest.mark.parametrize(("options", "field"), [
    ({"n_epochs": 0}, "options.n_epochs"), ({"batch_size": "big"}, "options.batch_size"),
    ({"learning_rate_multiplier": -1}, "options.learning_rate_multiplier"), ({"model": ""}, "options.model"),
    ({"suffix": "x" * 65}, "options.suffix"), ({"lora_rank": 8}, "options.lora_rank"),
])
def test_bad_options_name_their_field(tmp_path: Path, options: dict, field: str) -> None:
    with pytest.raises(UserError) as e:
        technique.options(openai_spec(chat_file(tmp_path), **options))
    assert e.value.field == field


def test_preflight_wants_the_key_from_the_environment_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY") as e:
        technique.preflight(openai_spec(chat_file(tmp_path)))
    assert "never written" in str(e.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    technique.preflight(openai_spec(chat_file(tmp_path)))


def test_service_drops_credentials_from_the_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:secret@llm.example.com:8443/v1")
    assert openai_api.service() == "https://llm.example.com:8443/v1"
