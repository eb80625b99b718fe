"""The layouts people bring, detected from the rows and read as conversations (engine/data/formats.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data.formats import BadRow, Conversation, Document, detect, read_row
from engine.data.sources import DataSource, iter_items
from engine.errors import UserError
from chat_helpers import CONVERSATIONS, sharegpt, write_jsonl


def layout_of(rows: list[dict], **settings: str):  # noqa: ANN201
    return detect(rows, DataSource("x", **settings), "f.jsonl:1")


def roles(conv: Conversation) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in conv.messages]


def test_each_layout_is_detected_and_named() -> None:
    assert layout_of([{"messages": CONVERSATIONS[0]}]).format == "messages"
    assert layout_of([sharegpt(CONVERSATIONS[0])]).format == "sharegpt"
    assert layout_of([{"instruction": "i", "input": "", "output": "o"}]).format == "alpaca"
    for prompt, response in (("prompt", "completion"), ("question", "answer"), ("query", "response")):
        found = layout_of([{prompt: "p", response: "r", "id": 3}])
        assert found.format == "prompt_response" and found.columns == {"prompt": prompt, "response": response}
    assert layout_of([{"text": "a document"}]).format == "text"
    assert layout_of([{"q": "p", "a": "r"}], prompt_column="q", response_column="a").columns == \
        {"prompt": "q", "response": "a"}
    # the layout named in the spec wins over detection
    assert layout_of([{"instruction": "i", "output": "o", "text": "t"}], format="text").format == "text"
    with pytest.raises(UserError, match=r"no column holds text or a conversation.*columns: id, score"):
        layout_of([{"id": 1, "score": 2}])


def test_preference_rows_are_named_not_trained_unless_asked() -> None:
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    with pytest.raises(UserError, match=r"preference data \(chosen and rejected.*data.format = \"chosen\"") as info:
        layout_of(rows)
    assert info.value.field == "data.format"
    layout = layout_of(rows, format="chosen")
    assert roles(read_row(layout, rows[0])) == [("user", "p"), ("assistant", "good")]
    conv_rows = [{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                  "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "no"}]}]
    assert roles(read_row(layout_of(conv_rows, format="chosen"), conv_rows[0])) == [("user", "q"), ("assistant", "a")]


def test_alpaca_keeps_input_history_and_system() -> None:
    row = {"instruction": "Summarise.", "input": "A long text.", "output": "Short.", "system": "Be brief.",
           "history": [["Hi", "Hello."]]}
    conv = read_row(layout_of([row]), row)
    assert roles(conv) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."),
                           ("user", "Summarise.\n\nA long text."), ("assistant", "Short.")]
    assert conv.trained == (False, False, True, False, True)
    bare = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert roles(read_row(layout_of([bare]), bare)) == [("user", "Name a colour."), ("assistant", "Blue.")]


def test_sharegpt_roles_as_llama_factory_maps_them() -> None:
    row = {"conversations": [{"from": "human", "value": "weather?"},
                             {"from": "function_call", "value": '{"name": "weather"}'},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}],
           "system": "You are a bot.", "tools": '[{"name": "weather", "description": "look it up"}]'}
    conv = read_row(layout_of([row]), row)
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.trained == (False, False, True, False, True)
    assert conv.tools == ({"name": "weather", "description": "look it up"},)


def test_openai_weight_zero_and_content_parts() -> None:
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                            {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "draft", "weight": 0}, {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "final", "weight": 1}]}
    conv = read_row(layout_of([row]), row)
    assert roles(conv)[1] == ("user", "ab") and conv.trained == (False, False, False, False, True)
    assert all("weight" not in m for m in conv.messages)


@pytest.mark.parametrize("messages, why", [
    ([{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}], r"unknown role 'wizard'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], r"message 2 is an empty assistant"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
     r"ends on a user turn"),
    ([{"role": "user", "content": "q"}], r"no assistant turn"),
    ([{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}], r"content must be text, got a number 5"),
])
def test_bad_conversations_say_what_is_wrong(messages: list[dict], why: str) -> None:
    layout = layout_of([{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(BadRow, match=why):
        read_row(layout, {"messages": messages})


def test_bad_rows_are_named_by_line_or_skipped(tmp_path: Path) -> None:
    good = {"messages": CONVERSATIONS[1]}
    rows = [good, {"messages": [{"role": "user", "content": "q"}]}, good,
            {"instruction": "mixed in", "output": "x"}, good]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(UserError) as info:
        list(iter_items(DataSource(str(path))))
    message = str(info.value)
    assert f"{path}:2: the conversation has no assistant turn" in message
    assert f"{path}:4: field 'messages' must be a non-empty list of messages, got missing" in message
    assert "do not all hold the same layout" in message and 'data.on_bad_row = "skip"' in message
    from engine.data.sources import Skipped

    skipped = Skipped()
    items = list(iter_items(DataSource(str(path), on_bad_row="skip"), skipped))
    assert len(items) == 3 and skipped.count == 2 and skipped.first[0].startswith(f"{path}:2: ")
    assert all(isinstance(i.value, Conversation) for i in items) and items[1].where == f"{path}:3"


def test_label_and_text_rows_are_documents(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"body": "late again", "label": "complaint"}, {"body": "", "label": 1}])
    labelled = [i.value for i in iter_items(DataSource(str(path), text_column="body", label_column="label"))]
    assert labelled[0] == Document("body : late again Label : complaint", "body : late again Label : ")
    assert labelled[1].completion == "1"
    texts = [i.value for i in iter_items(DataSource(str(path), text_column="body"))]
    assert texts == [Document("late again", markup=True)]  # the empty text is skipped


# --- every layout in every container it fits, through the same path ----------------------------------------

NESTED = [{"messages": c} for c in CONVERSATIONS]  # lists of messages: JSON, Parquet, Arrow only
FLAT = {"alpaca": [{"instruction": "Name a prime number.", "input": "", "output": "Seven is prime."},
                   {"instruction": "Translate.", "input": "bonjour", "output": "It means hello."}],
        "prompt_response": [{"prompt": "What colour is the sky?", "completion": "Blue."},
                            {"prompt": "And at night?", "completion": "Black."}]}


def _container_cases() -> list[tuple[str, str]]:
    nested = [("messages", c) for c in ("rows.jsonl", "rows.json", "rows.parquet", "rows.arrow", "rows.jsonl.zst")]
    nested += [("sharegpt", c) for c in ("rows.jsonl.gz", "rows.parquet", "hub")]
    flat = [(fmt, c) for fmt in FLAT for c in ("rows.jsonl", "rows.json", "rows.csv", "rows.tsv", "rows.parquet",
                                              "save_to_disk")]
    return nested + flat


@pytest.mark.parametrize("layout, container", _container_cases())
def test_each_layout_in_each_container_reads_the_same_conversations(tmp_path: Path, layout: str,
                                                                    container: str) -> None:
    from test_data_containers import write

    rows = {"messages": NESTED, "sharegpt": [sharegpt(c) for c in CONVERSATIONS]}.get(layout) or FLAT[layout]
    expected = [i.value for i in iter_items(DataSource(str(write_jsonl(tmp_path / "ref.jsonl", rows))))]
    if container == "hub":  # a cloned Hub dataset: README.md is documentation, data/ holds the splits
        write(tmp_path / "clone" / "data" / "train.jsonl.gz", rows)
        write(tmp_path / "clone" / "data" / "test.jsonl.gz", rows[:1])
        (tmp_path / "clone" / "README.md").write_text("---\nlicense: mit\n---\n# Card\nNot data.\n")
        path = tmp_path / "clone"
    elif container == "save_to_disk":
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
        path = tmp_path / "saved"
    else:
        path = write(tmp_path / container, rows)
    source = DataSource(str(path))
    assert source.layout().format == layout
    got = [i.value for i in iter_items(source)]
    assert got == expected and len(got) == len(rows)
    assert all(isinstance(v, Conversation) for v in got)


def test_llama_factory_v1_parts_loss_weight_and_reasoning() -> None:
    """LLaMA-Factory's v1 layout: content as [{"type", "value"}] parts, `loss_weight`, reasoning parts."""
    row = {"messages": [
        {"role": "system", "content": [{"type": "text", "value": "Use tools."}]},
        {"role": "user", "content": [{"type": "text", "value": "hi"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "greet back"},
                                          {"type": "text", "value": "Hello!"}], "loss_weight": 1.0},
        {"role": "user", "content": [{"type": "text", "value": "again"}]},
        {"role": "assistant", "content": [{"type": "text", "value": "Hi."},
                                          {"type": "tool_call", "value": '{"name": "wave", "arguments": {"n": 2}}'}],
         "loss_weight": 0.0}]}
    conv = read_row(layout_of([row]), row)
    assert conv.messages[4]["tool_calls"] == [{"type": "function", "function": {"name": "wave", "arguments": {"n": 2}}}]
    assert roles(conv) == [("system", "Use tools."), ("user", "hi"), ("assistant", "Hello!"), ("user", "again"),
                           ("assistant", "Hi.")]
    assert conv.messages[2]["reasoning_content"] == "greet back" and "loss_weight" not in conv.messages[2]
    assert conv.trained == (False, False, True, False, False)
    image = {"messages": [{"role": "user", "content": [{"type": "image", "value": "cat.png"}]},
                          {"role": "assistant", "content": "a cat"}]}
    with pytest.raises(BadRow, match=r"message 1 holds a 'image' part: only text is trained here"):
        read_row(layout_of([row]), image)
