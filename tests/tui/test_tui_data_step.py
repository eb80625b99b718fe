"""The wizard's Data step on chat data, a Slack export and a table with unknown column names, in the Textual
app and in `--plain`: the detected format, the settings, the preview as trained and the spec they write."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from tui_helpers import fixed_report, screen_text, wait_until

from chat_helpers import many, qwen2_model, sharegpt, slack_export, train_bpe, write_jsonl
from engine.spec import from_dict
from tui.app import make_app
from tui.plain import Prompts, run_plain
from tui.screens.dataset import DatasetScreen

ENTER, DOWN, UP, BACKSPACE = "\r", "\x1b[B", "\x1b[A", "\x7f"


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("data-step")
    model = qwen2_model(root / "model", train_bpe(root / "tok"))
    convs = many(12)
    table = root / "pairs.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["q", "a"])
        writer.writerows([(c[-2]["content"], c[-1]["content"]) for c in convs])
    return SimpleNamespace(model=model, sharegpt=write_jsonl(root / "chat.jsonl", [sharegpt(c) for c in convs]),
                           slack=slack_export(root / "slack"), table=table)


def data_app(chat: SimpleNamespace, dataset: Path):  # noqa: ANN201
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False)
    c = app.choices
    c.technique, c.model, c.dataset = "full", str(chat.model), str(dataset)
    return app


async def test_chat_data_shows_format_settings_and_examples_as_trained(chat: SimpleNamespace) -> None:
    app = data_app(chat, chat.sharegpt)
    c = app.choices
    async with app.run_test(size=(100, 34)) as pilot:
        app.push_screen(DatasetScreen())
        await wait_until(pilot, lambda: "data_tokens" in c.extra, timeout=60)
        await pilot.pause()
        text = screen_text(app)
        assert "sharegpt (messages=conversations) from jsonl file" in text
        assert "auto: sharegpt" in text and "auto: the model's own chat template" in text
        assert "<|im_start|>assistant" in text and "The sky is blue on a clear day.<|im_end|>" in text
        tokens = c.extra["data_tokens"]
        screen = app.screen
        screen.query_one("#data-settings").focus()
        await pilot.press("down", "down", "right")  # train on: assistant -> last_assistant
        assert c.train_on == "last_assistant"
        await wait_until(pilot, lambda: "data_tokens" in c.extra, timeout=60)
        assert c.extra["data_tokens"] == tokens  # the same tokens, fewer of them trained
        assert from_dict(spec_dict_of(app)).data.train_on == "last_assistant"


def spec_dict_of(app):  # noqa: ANN001, ANN201
    from tui.wizard import spec_dict

    return spec_dict(app.choices)


async def test_slack_export_waits_for_the_user_chosen_from_the_list(chat: SimpleNamespace) -> None:
    app = data_app(chat, chat.slack)
    c = app.choices
    async with app.run_test(size=(100, 34)) as pilot:
        app.push_screen(DatasetScreen())
        screen = app.screen
        await wait_until(pilot, lambda: screen.corpus is not None, timeout=60)
        await pilot.pause()
        assert "choose (space)" in screen_text(app) and not screen.ready()
        screen.query_one("#data-settings").focus()
        await pilot.press("space")  # the list, with message counts
        await pilot.pause()
        assert "annie (6 messages)" in screen_text(app) and "Bob Ray" in screen_text(app)
        await pilot.press("enter")
        await wait_until(pilot, lambda: "data_tokens" in c.extra, timeout=60)
        assert c.slack_user == "U1" and screen.ready()
        assert from_dict(spec_dict_of(app)).data.slack_user == "U1"


async def test_a_table_with_unknown_columns_is_mapped_by_hand(chat: SimpleNamespace) -> None:
    app = data_app(chat, chat.table)
    c = app.choices
    async with app.run_test(size=(100, 34)) as pilot:
        app.push_screen(DatasetScreen())
        screen = app.screen
        await wait_until(pilot, lambda: screen.error is not None, timeout=60)
        # words alone: where the line wraps depends on the length of the temporary path before it
        assert "no column holds text or a conversation" in " ".join(screen_text(app).split())
        screen.query_one("#data-columns").focus()
        await pilot.press(*"prompt=q, response=a")
        await wait_until(pilot, lambda: "data_tokens" in c.extra, timeout=60)
        await pilot.pause()
        assert (c.prompt_column, c.response_column) == ("q", "a")
        assert "prompt_response (prompt=q, response=a)" in screen_text(app)
        spec = from_dict(spec_dict_of(app))
        assert (spec.data.prompt_column, spec.data.response_column) == ("q", "a")


def plain_run(tmp_path: Path, keys: list[str]) -> dict:
    with create_pipe_input() as pipe:
        for k in keys:
            pipe.send_text(k)
        code = run_plain(runs_dir=str(tmp_path / "runs"), prompts=Prompts(input=pipe, output=DummyOutput()),
                         cwd=tmp_path)
    assert code == 0
    return tomllib.loads((tmp_path / "full.toml").read_text())


def head(chat: SimpleNamespace, dataset: Path) -> list[str]:
    """Technique full (up once from the recommended LoRA), the model, the data path."""
    return [UP + ENTER, str(chat.model) + ENTER, BACKSPACE * 10 + str(dataset) + ENTER]


TAIL = [ENTER, ENTER, ENTER, ENTER, "y", "n"]  # steps, GPUs, machines, strategy; save; do not launch


def test_plain_asks_the_slack_user_template_and_train_on(tmp_path: Path, chat: SimpleNamespace,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    keys = head(chat, chat.slack) + [DOWN + ENTER,  # the second user of the numbered list: Bob Ray
                                     DOWN * 3 + ENTER,  # template: auto, plain, chatml -> llama-3
                                     DOWN * 2 + ENTER]  # train on: all
    data = plain_run(tmp_path, keys + TAIL)["data"]
    assert (data["slack_user"], data["template"], data["train_on"]) == ("U2", "llama-3", "all")


def test_plain_edits_the_column_mapping(tmp_path: Path, chat: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    sheet = tmp_path / "qa.csv"
    sheet.write_text("question,answer,q2\n" + "".join(f"What is {k}?,It is {k}.,Which {k}?\n" for k in range(40)))
    keys = head(chat, sheet) + ["n",  # columns question/answer found: change them
                                BACKSPACE * 40 + "prompt=q2, response=answer" + ENTER,
                                ENTER, ENTER]  # template auto, train on assistant
    data = plain_run(tmp_path, keys + TAIL)["data"]
    assert (data["prompt_column"], data["response_column"]) == ("q2", "answer")
    assert (data["template"], data["train_on"]) == ("auto", "assistant")
