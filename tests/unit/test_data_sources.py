"""Every data source as items, previews and token counts; malformed input named by file and line
(RELIABILITY D1, D2, D3, D4, D5, D7, D8, D9, D11, M1, M2)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.data.corpus import read_text
from engine.data.formats import Conversation
from engine.data.sources import DataSource, Example, iter_examples, preview, source_bytes
from engine.errors import UserError
from engine.spec import DataSpec
from data_helpers import make_corpus

ROWS = [{"q": f"question {i}?", "a": f"answer {i}.", "label": ["yes", "no"][i % 2], "body": f"doc {i}"}
        for i in range(6)]


@pytest.fixture
def byte_tok():  # noqa: ANN201 - a transformers tokenizer
    from engine.data.tokenizer_train import train_tokenizer

    seed = Path(os.environ["LLM_WIZARD_CACHE"]) / "seed.txt"  # conftest gives each test its own cache
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_text("seed\n")
    return train_tokenizer([seed], "byte", 257)  # ids are UTF-8 bytes: counts can be checked by hand


def write_rows(path: Path, rows: list[dict], kind: str) -> Path:
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def count_tokens(source: DataSource, tokenizer, seq_len: int = 64) -> int:  # noqa: ANN001
    """Tokens the trainer sees, as `llm-wizard data` counts them."""
    from engine.data.prepare import prepare

    return prepare(source, tokenizer, seq_len, val_fraction=0.0).report.tokens


def pair(conv: Conversation) -> tuple[str, str]:
    """(user turn, reply) of a one-exchange conversation."""
    return conv.messages[-2]["content"], conv.messages[-1]["content"]


# --- sources -------------------------------------------------------------------------------------------


def test_text_file_and_folder(tmp_path: Path, byte_tok) -> None:
    files = make_corpus(tmp_path / "corpus", n_files=3)
    folder = DataSource(str(tmp_path / "corpus"))
    assert folder.kind == "text" and folder.layout().format == "text" and not folder.masks
    examples = list(iter_examples(folder))
    assert "".join(e.text for e in examples) == "".join(read_text(f) for f in files)
    assert preview(folder, 2)[0]["text"] == read_text(files[0])
    expected = sum(nbytes(read_text(f)) for f in files) + len(files)  # one eos a file
    assert count_tokens(folder, byte_tok) == expected
    assert source_bytes(folder) == sum(f.stat().st_size for f in files)


def test_long_text_file_is_cut_in_pieces_that_continue(tmp_path: Path, byte_tok) -> None:
    big = tmp_path / "big.txt"
    big.write_text("a line of text\n" * 20_000)  # 300 KB: several 64 KB pieces
    examples = list(iter_examples(DataSource(str(big))))
    assert len(examples) > 3 and [e.ends for e in examples] == [False] * (len(examples) - 1) + [True]
    assert "".join(e.text for e in examples) == big.read_text()
    assert count_tokens(DataSource(str(big)), byte_tok) == big.stat().st_size + 1


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_structured_text_prompt_response_and_label(tmp_path: Path, kind: str, byte_tok) -> None:
    path = write_rows(tmp_path / f"rows.{kind}", ROWS, kind)
    plain = DataSource(str(path), text_column="body")
    assert plain.kind == "table" and plain.layout().format == "text"
    assert [e.text for e in iter_examples(plain)] == [r["body"] for r in ROWS]
    assert count_tokens(plain, byte_tok, 8) == sum(nbytes(r["body"]) + 1 for r in ROWS)

    chat = DataSource(str(path), prompt_column="q", response_column="a")
    first = next(iter_examples(chat))
    assert pair(first) == ("question 0?", "answer 0.") and chat.masks and chat.is_chat
    assert preview(chat, 1) == [{"prompt": "question 0?", "response": "answer 0."}]
    # the byte tokenizer has no chat template: the plain layout, the reply and its eos trained
    plain_layout = "### Prompt:\nquestion 0?\n### Response:\nanswer 0.\n"
    assert count_tokens(chat, byte_tok) == sum(len(plain_layout) + 1 for _ in ROWS)

    own = DataSource(str(path), prompt_column="q", response_column="a", template="Q: {prompt} A: {response}</s>",
                     train_on="all")
    assert pair(next(iter_examples(own))) == ("question 0?", "answer 0.") and own.masks

    labelled = DataSource(str(path), text_column="body", label_column="label")
    ex = list(iter_examples(labelled))[1]
    assert ex.prompt == "body : doc 1 Label : " and ex.completion == "no"  # the book's listing 5.3 format
    assert preview(labelled, 1)[0]["response"] == "yes"


def test_from_spec_and_guessed_column(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "r.jsonl", [{"id": 1, "content": "hello"}], "jsonl")
    spec = DataSpec(path=str(path), text_column="")
    source = DataSource.from_spec(spec)
    assert source.path == str(path) and source.format == "auto" and source.template == spec.template == "auto"
    assert [e.text for e in iter_examples(source)] == ["hello"]
    with pytest.raises(UserError, match=r"no column holds text or a conversation.*columns: id"):
        list(iter_examples(DataSource(str(write_rows(tmp_path / "n.csv", [{"id": 1}], "csv")), text_column="")))


def test_crlf_bom_and_blank_lines_are_accepted(tmp_path: Path) -> None:  # RELIABILITY.md D11
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n\r\n{"text": "two"}\r\n\r\n\r\n')
    assert [e.text for e in iter_examples(DataSource(str(path)))] == ["one", "two"]
    table = tmp_path / "win.csv"
    table.write_bytes(b'\xef\xbb\xbftext,n\r\n"multi\r\nline",1\r\nplain,2\r\n')
    assert [e.text for e in iter_examples(DataSource(str(table)))] == ["multi\nline", "plain"]


def test_folder_of_jsonl_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_rows(tmp_path / "d" / "b.jsonl", [{"text": "second"}], "jsonl")
    write_rows(tmp_path / "d" / "a.jsonl", [{"text": "first"}], "jsonl")
    for source in (DataSource(str(tmp_path / "d"), format="text"), DataSource(str(tmp_path / "d"))):
        if source.format == "text":  # named as text, the files are read as text, JSON and all
            assert source.kind == "text" and '{"text": "first"}' in next(iter_examples(source)).text
            continue
        assert source.kind == "table" and [e.text for e in iter_examples(source)] == ["first", "second"]
    (tmp_path / "d" / "notes.txt").write_text("a text file among the tables\n")
    with pytest.raises(UserError, match=r"several kinds \(jsonl: 2 files .*text: 1 file \(notes.txt\)\)"):
        DataSource(str(tmp_path / "d")).kind  # noqa: B018


def test_too_small_for_a_validation_split(tmp_path: Path, byte_tok) -> None:  # D8
    from engine.data.prepare import example_blocks

    path = write_rows(tmp_path / "chat.jsonl", ROWS[:1], "jsonl")
    source = DataSource(str(path), prompt_column="q", response_column="a")
    with pytest.raises(UserError, match=r"too few for a training and a validation block.*data.val_fraction = 0"):
        example_blocks(source, byte_tok, 64, val_fraction=0.05, cache_dir=tmp_path / "c")
    blocks, _ = example_blocks(source, byte_tok, 64, val_fraction=0.0, cache_dir=tmp_path / "c")
    assert blocks.n_val_blocks == 0 and blocks.n_train_blocks == 1


def make_hub_cache(home: Path, repo: str, rows: list[dict], features=None) -> None:  # noqa: ANN001
    """A dataset in the datasets cache as a download from the Hub leaves it (namespace___name/default/...)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    home.mkdir(parents=True, exist_ok=True)
    src = home / "src.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    owner, name = repo.split("/")
    builder = Parquet(dataset_name=name, cache_dir=str(home / "build"), features=features,
                      data_files=DataFilesDict.from_local_or_remote({"train": [str(src)]}, base_path=str(home)))
    builder.download_and_prepare()
    target = home / "datasets" / f"{owner}___{name}" / "default" / "0.0.0"
    target.mkdir(parents=True, exist_ok=True)
    Path(builder.cache_dir).rename(target / "0123abcd")


def test_hub_dataset_from_the_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, byte_tok) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    make_hub_cache(tmp_path / "hf", "tester/tiny", ROWS)
    import datasets

    was_offline = False  # as in a process that may download a model later
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", was_offline)
    source = DataSource.from_spec(DataSpec(path="tester/tiny", format="hub", prompt_column="q", response_column="a"))
    examples = list(iter_examples(source))
    assert len(examples) == len(ROWS) and pair(examples[2]) == ("question 2?", "answer 2.")
    assert preview(source, 1)[0] == {"prompt": "question 0?", "response": "answer 0."}
    assert count_tokens(source, byte_tok) == sum(len(f"### Prompt:\n{r['q']}\n### Response:\n{r['a']}\n") + 1
                                                 for r in ROWS)
    with pytest.raises(UserError, match="Unknown split"):
        list(iter_examples(DataSource("tester/tiny", format="hub", split="validation")))
    with pytest.raises(UserError, match=r"'tester/absent' is not in the local cache.*load_dataset\('tester/absent'\)"):
        preview(DataSource("tester/absent", format="hub"))
    with pytest.raises(UserError, match=r"Couldn't find cache for tester/tiny for config 'other'") as info:
        preview(DataSource("tester/tiny", format="hub", subset="other"))
    assert info.value.field == "data.subset"
    # offline for the read only: settings as they were before
    assert datasets.config.HF_HUB_OFFLINE is was_offline and "HF_DATASETS_OFFLINE" not in os.environ


def test_hub_class_labels_are_learned_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import ClassLabel, Features, Value

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    features = Features({"Tweet text": Value("string"), "Label": ClassLabel(names=["complaint", "no complaint"])})
    make_hub_cache(tmp_path / "hf", "ought/complaints", [{"Tweet text": "late again", "Label": 0},
                                                         {"Tweet text": "thanks!", "Label": 1}], features)
    source = DataSource("ought/complaints", format="hub", text_column="Tweet text", label_column="Label")
    assert preview(source) == [{"prompt": "Tweet text : late again Label : ", "response": "complaint"},
                               {"prompt": "Tweet text : thanks! Label : ", "response": "no complaint"}]


def test_hub_id_is_not_taken_for_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match='set data.format = "hub"'):
        DataSpec(path="someone/dataset")
    with pytest.raises(UserError, match="owner/name"):
        DataSpec(path="/abs/path", format="hub")


# --- Slack export ------------------------------------------------------------------------------------------


USERS = [
    {"id": "U1", "name": "ann", "real_name": "Ann Lee", "profile": {"display_name": "annie", "real_name": "Ann Lee"}},
    {"id": "U2", "name": "bob", "profile": {"display_name": "", "real_name": "Bob Ray"}},
    {"id": "U3", "name": "cat", "profile": {"display_name": "cat"}},
]


def make_slack_export(root: Path) -> Path:
    """Two channels over three days, three users, a thread, a join message, an upload line, a bot and markup."""
    def day(channel: str, date: str, messages: list[dict]) -> None:
        (root / channel).mkdir(parents=True, exist_ok=True)
        (root / channel / f"{date}.json").write_text(json.dumps(messages, indent=1))

    root.mkdir()
    (root / "users.json").write_text(json.dumps(USERS))
    (root / "channels.json").write_text(json.dumps([{"id": "C1", "name": "general"}, {"id": "C2", "name": "random"}]))
    t = 1_700_000_000
    day("general", "2023-11-14", [
        {"type": "message", "subtype": "channel_join", "user": "U2", "text": "<@U2> has joined", "ts": f"{t}.000100"},
        {"type": "message", "user": "U2", "text": "morning all", "ts": f"{t + 10}.000100"},
        {"type": "message", "user": "U1", "text": "hi <@U2>, see <https://x.org|the doc> &amp; more", "ts": f"{t + 20}.0001"},
        # what Slack writes for a person is not their words
        {"type": "message", "subtype": "file_share", "user": "U1", "text": "<@U1> uploaded a file: <https://x.org/a.png|a.png>",
         "ts": f"{t + 25}.000100"},
        {"type": "message", "user": "U3", "text": "release today?", "ts": f"{t + 30}.000100", "thread_ts": f"{t + 30}.000100"},
        {"type": "message", "user": "U2", "text": "yes at noon", "ts": f"{t + 40}.000100", "thread_ts": f"{t + 30}.000100"},
        {"type": "message", "user": "U1", "text": "I will tag it", "ts": f"{t + 50}.000100", "thread_ts": f"{t + 30}.000100"},
        {"type": "message", "subtype": "bot_message", "bot_id": "B1", "text": "build passed", "ts": f"{t + 60}.0001"},
    ])
    day("general", "2023-11-15", [
        {"type": "message", "user": "U1", "text": "", "ts": f"{t + 86400}.000100"},  # a file without a caption
        {"type": "message", "user": "U1", "text": "new day", "ts": f"{t + 86410}.000100"},
        {"type": "message", "user": "U1", "text": "tagged", "ts": f"{t + 86420}.000100", "thread_ts": f"{t + 30}.000100"},
    ])
    day("random", "2023-11-14", [
        {"type": "message", "user": "U3", "text": "lunch?", "ts": f"{t + 5}.000100"},
        {"type": "message", "user": "U1", "text": "sure", "ts": f"{t + 15}.000100"},
    ])
    return root


def test_slack_export_persona(tmp_path: Path, byte_tok) -> None:
    from engine.data.slack import slack_users

    root = make_slack_export(tmp_path / "export")
    source = DataSource.from_spec(DataSpec(path=str(root), slack_user="annie", context=3))
    assert source.kind == "slack" and source.masks and source.is_chat
    examples = list(iter_examples(source))
    pairs = [pair(e) for e in examples]
    assert pairs == [
        ("Bob Ray: morning all", "hi @Bob Ray, see the doc & more"),  # the join and markup cleaned
        # a thread reply: the thread's parent and replies only, not the channel
        ("cat: release today?\nBob Ray: yes at noon", "I will tag it"),
        ("", "new day"),  # the day before is over six hours old: another conversation
        ("", "tagged"),  # so is a thread's: a late reply starts afresh
        ("cat: lunch?", "sure"),  # the other channel starts its own context
    ]
    assert count_tokens(source, byte_tok, 256) == sum(
        len(f"### Prompt:\n{p}\n### Response:\n{r}\n".encode()) + 1 for p, r in pairs)
    assert [(u.id, u.messages) for u in slack_users(root)] == [("U1", 5), ("U2", 2), ("U3", 2)]
    for chosen in ("U1", "Ann Lee", "@ann"):  # id, real name, handle
        assert pair(next(iter_examples(DataSource(str(root), slack_user=chosen))))[1].startswith("hi ")
    one = DataSource(str(root), slack_user="ann", context=1)
    assert "cat: release today?" not in next(pair(e)[0] for e in iter_examples(one) if pair(e)[1] == "I will tag it")


def test_slack_user_must_be_chosen_and_exist(tmp_path: Path) -> None:
    root = make_slack_export(tmp_path / "export")
    with pytest.raises(UserError, match=r"choose the Slack user.*annie \(5\), Bob Ray \(2\), cat \(2\)"):
        preview(DataSource(str(root)))
    with pytest.raises(UserError, match=r"no Slack user 'dave'.*annie \(5\)") as info:
        preview(DataSource(str(root), slack_user="dave"))
    assert info.value.field == "data.slack_user"
    (root / "random" / "2023-11-16.json").write_text('[{"user": "U1", "text": "x", "ts": "1"},\n {"user": }]')
    with pytest.raises(UserError, match=r"random/2023-11-16.json:2:11: not valid JSON"):
        list(iter_examples(DataSource(str(root), slack_user="ann")))


# --- malformed input (RELIABILITY.md D1-D5) -------------------------------------------------------------


def test_jsonl_with_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "fine"}\n{"text": "no end}\n')
    with pytest.raises(UserError, match=r"broken.jsonl:3:10: not valid JSON \(Unterminated string"):
        list(iter_examples(DataSource(str(path))))
    path.write_text('["a", "b"]\n')
    with pytest.raises(UserError, match=r"broken.jsonl:1: expected a JSON object per line, got an array"):
        list(iter_examples(DataSource(str(path))))
    path.write_text('[{"text": "a"},\n {"text": "b"}]\n')
    with pytest.raises(UserError, match=r"broken.jsonl:1:\d+: .*a JSON array is not JSON Lines: name the file .json"):
        list(iter_examples(DataSource(str(path))))


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_table_without_the_named_column_lists_its_columns(tmp_path: Path, kind: str) -> None:
    path = write_rows(tmp_path / f"t.{kind}", ROWS, kind)
    with pytest.raises(UserError, match=rf"t.{kind}(:\d| row 1)? has no column 'review'; it has q, a, label, body"):
        preview(DataSource(str(path), text_column="review"))
    with pytest.raises(UserError, match=r"has no column 'answer'"):
        preview(DataSource(str(path), prompt_column="q", response_column="answer"))


def test_empty_parquet_and_empty_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    no_rows = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), no_rows)
    with pytest.raises(UserError, match=r"none.parquet: the Parquet file has no rows"):
        preview(DataSource(str(no_rows)))
    for name in ("zero.parquet", "empty.jsonl", "empty.csv", "empty.txt"):  # D1
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(UserError, match=rf"file is empty: .*{name}"):
            preview(DataSource(str(tmp_path / name)))
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match=r"blank.jsonl has no rows \(only blank lines\)"):
        preview(DataSource(str(tmp_path / "blank.jsonl")))
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(UserError, match=r"header.csv has a header but no rows"):
        preview(DataSource(str(tmp_path / "header.csv")))
    (tmp_path / "fake.parquet").write_text("not parquet at all")
    with pytest.raises(UserError, match=r"cannot read .*fake.parquet as Parquet"):
        preview(DataSource(str(tmp_path / "fake.parquet")))


def test_binary_and_non_utf8_files_are_named_with_line(tmp_path: Path) -> None:  # D2, D3
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"text": "ok"}\n\x00\x01\x02\x03')
    with pytest.raises(UserError, match=r"not a text/JSONL file: NUL byte at offset 15 in .*binary.jsonl"):
        list(iter_examples(DataSource(str(binary))))
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.jsonl is not UTF-8: invalid byte 0xE9 at line 2, byte offset 28"):
        list(iter_examples(DataSource(str(latin))))
    table = tmp_path / "latin1.csv"
    table.write_bytes("text\nok\nnaïve\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.csv is not UTF-8: invalid byte 0xEF at line 3"):
        list(iter_examples(DataSource(str(table))))
    text = tmp_path / "latin1.txt"
    text.write_bytes("fine\nsoupçon\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt is not UTF-8: invalid byte 0xE7 at line 2"):
        list(iter_examples(DataSource(str(text))))


def test_missing_null_and_wrong_type_fields_list_the_first_lines(tmp_path: Path) -> None:  # D5
    path = tmp_path / "chat.jsonl"
    lines = [{"q": "a", "a": "b"}, {"q": "c"}, {"q": "d", "a": None}, {"q": "e", "a": "f"}, {"q": "g", "a": 7},
             {"q": "h", "a": ["x"]}] + [{"q": "i", "a": None}] * 10
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    source = DataSource(str(path), prompt_column="q", response_column="a")
    with pytest.raises(UserError) as info:
        list(iter_examples(source))
    message = str(info.value)
    for line, what in ((2, "missing"), (3, "null"), (5, "a number 7"), (6, 'an array ["x"]'), (7, "null")):
        assert f"{path}:{line}: field 'a' must be text, got {what}" in message
    assert f"{path}:8" not in message  # the first five only
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"text": "t", "label": 1}\n{"text": "u", "label": true}\n{"text": "v", "label": {"k": 1}}\n')
    with pytest.raises(UserError, match=r"labels.jsonl:2: field 'label' must be text or a number, got a boolean"):
        list(iter_examples(DataSource(str(labels), label_column="label")))
    first = next(iter_examples(DataSource(str(labels), label_column="label")))
    assert first.completion == "1"  # numbers are labels too
    short = tmp_path / "short.csv"
    short.write_text("q,a\nx,y\nonly\n")
    with pytest.raises(UserError, match=r"short.csv:3: field 'a' must be text, got missing"):
        list(iter_examples(DataSource(str(short), prompt_column="q", response_column="a")))


def test_empty_texts_are_skipped_but_not_all_of_them(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "e.jsonl", [{"text": ""}, {"text": "kept"}], "jsonl")
    assert [e.text for e in iter_examples(DataSource(str(path)))] == ["kept"]
    write_rows(path, [{"text": ""}, {"text": ""}], "jsonl")
    with pytest.raises(UserError, match="no usable rows"):
        preview(DataSource(str(path)))


def test_spec_validates_the_new_data_fields(tmp_path: Path) -> None:
    make_corpus(tmp_path, n_files=1)
    with pytest.raises(UserError, match="data.response_column: set prompt_column and response_column together"):
        DataSpec(path=str(tmp_path), prompt_column="q")
    with pytest.raises(UserError, match="data.template: needs {response} once"):
        DataSpec(path=str(tmp_path), template="{response} {prompt}")
    with pytest.raises(UserError, match="data.template: unknown template 'chatgpt'"):
        DataSpec(path=str(tmp_path), template="chatgpt")
    with pytest.raises(UserError, match="data.format: unknown value 'xml'"):
        DataSpec(path=str(tmp_path), format="xml")
    with pytest.raises(UserError, match="data.label_column: use either"):
        DataSpec(path=str(tmp_path), prompt_column="q", response_column="a", label_column="l")
    with pytest.raises(UserError, match="data.train_on: unknown value 'user'"):
        DataSpec(path=str(tmp_path), train_on="user")


def test_former_data_settings_read_as_todays(tmp_path: Path) -> None:
    from engine.spec import from_dict

    make_corpus(tmp_path, n_files=1)
    spec = from_dict({"data": {"path": str(tmp_path), "format": "jsonl", "mask_prompt": False}})
    assert spec.data.format == "auto" and spec.data.train_on == "all"
    assert from_dict({"data": {"path": str(tmp_path), "mask_prompt": True}}).data.train_on == "assistant"


def test_large_jsonl_streams_in_bounded_memory(tmp_path: Path) -> None:  # D9
    row = json.dumps({"text": "x" * 200}) + "\n"
    peaks = []
    for n in (10_000, 40_000):  # 2 MB and 8 MB
        path = tmp_path / f"big{n}.jsonl"
        path.write_text(row * n)
        tracemalloc.start()
        assert sum(1 for _ in iter_examples(DataSource(str(path)))) == n
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # a few rows and a read buffer at a time: four times the file, not more memory
    assert peaks[1] < peaks[0] * 1.25 + 200_000 and peaks[1] < 6_000_000, peaks


# --- packed blocks with a loss mask --------------------------------------------------------------------------


def test_masked_blocks_mask_prompts_and_the_loss_ignores_them(tmp_path: Path, byte_tok) -> None:
    import torch
    import torch.nn.functional as F

    from engine.data.pack import PackedBlocks, lm_loss
    from engine.data.prepare import example_blocks

    path = write_rows(tmp_path / "chat.jsonl", ROWS * 4, "jsonl")
    source = DataSource(str(path), prompt_column="q", response_column="a")
    blocks, fingerprint = example_blocks(source, byte_tok, 48, val_fraction=0.1, cache_dir=tmp_path / "c")
    assert isinstance(blocks, PackedBlocks)
    texts = [f"### Prompt:\n{r['q']}\n### Response:\n{r['a']}\n" for r in ROWS * 4]
    assert blocks.n_tokens == sum(nbytes(t) + 1 for t in texts)  # the plain layout, its eos
    assert 0 < blocks.trained_tokens < blocks.n_tokens
    ids, mask = blocks._tokens[:].tolist(), (blocks._mask[:] & 1).tolist()
    n_all, n_prompt = nbytes(texts[0]) + 1, nbytes(texts[0].split("answer")[0])  # the eos before the last \n
    reply_end = texts[0].index("answer 0.") + len("answer 0.")
    assert ids[:n_all] == [*texts[0][:reply_end].encode(), byte_tok.eos_token_id, *b"\n"]
    assert sum(mask[:n_prompt]) == 0 and all(mask[n_prompt:n_prompt + len("answer 0.")])  # the reply is trained
    batch = blocks.train_batch(0, 0, 4)
    assert batch.shape == (4, 3, 49)

    vocab = len(byte_tok)
    torch.manual_seed(0)
    table = torch.randn(vocab, vocab)
    model = lambda input_ids, **_: SimpleNamespace(logits=table[input_ids])  # noqa: E731 - a bigram "model"
    loss = lm_loss(model, batch)
    logits, targets, keep = table[batch[:, 0, :-1]], batch[:, 0, 1:], batch[:, 1, 1:] == 1
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, expected)
    assert torch.allclose(lm_loss(model, batch[:, 0]), F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)))

    again, fingerprint2 = example_blocks(source, byte_tok, 48, val_fraction=0.1, cache_dir=tmp_path / "c")
    assert fingerprint2 == fingerprint and again.token_file.path == blocks.token_file.path
    changed = DataSource(str(path), prompt_column="q", response_column="a", template="{prompt}|{response}")
    assert example_blocks(changed, byte_tok, 48, cache_dir=tmp_path / "c")[1] != fingerprint


def test_unmasked_and_text_sources_give_plain_blocks(tmp_path: Path, byte_tok) -> None:
    from engine.data.pack import PackedBlocks
    from engine.data.prepare import example_blocks

    make_corpus(tmp_path / "corpus", n_files=2)
    blocks, _ = example_blocks(DataSource(str(tmp_path / "corpus")), byte_tok, 16, cache_dir=tmp_path / "c")
    assert not isinstance(blocks, PackedBlocks) and blocks.train_batch(0, 0, 2).shape == (2, 17)
    path = write_rows(tmp_path / "chat.jsonl", ROWS * 4, "jsonl")
    source = DataSource(str(path), prompt_column="q", response_column="a", train_on="all")
    blocks, _ = example_blocks(source, byte_tok, 48, cache_dir=tmp_path / "c")
    batch = blocks.train_batch(0, 0, 2)
    assert isinstance(blocks, PackedBlocks) and batch.shape == (2, 3, 49)
    starts = batch[:, 2] == 0
    assert bool((batch[:, 1][~starts & (batch[:, 0] != byte_tok.eos_token_id)] == 1).all())  # all of it trained


def test_everything_masked_is_refused(tmp_path: Path, byte_tok) -> None:  # D7
    from engine.data import prepare as data_prepare

    path = write_rows(tmp_path / "chat.jsonl", [{"q": "question " * 20, "a": "y"}] * 30, "jsonl")
    source = DataSource(str(path), prompt_column="q", response_column="a", template="{prompt}{response}")
    with pytest.raises(UserError, match=r"no example has a trained token within train.seq_len = 16 \(30 dropped"):
        data_prepare.example_blocks(source, byte_tok, 16, cache_dir=tmp_path / "c")


def test_source_blocks_from_a_run_spec(tmp_path: Path, byte_tok) -> None:
    from engine.data.pack import PackedBlocks
    from engine.data.prepare import source_blocks
    from engine.spec import from_dict
    from engine.techniques.base import SetupContext

    root = make_slack_export(tmp_path / "export")
    for i in range(40):  # enough replies for a few blocks
        (root / "random" / f"2023-12-{1 + i % 28:02d}.json").write_text(json.dumps([
            {"user": "U3", "text": f"ping {i}", "ts": f"{1_701_000_000 + i * 100_000}.1"},
            {"user": "U1", "text": f"pong {i}", "ts": f"{1_701_000_010 + i * 100_000}.1"}]))
    spec = from_dict({"technique": "lora", "data": {"path": "export", "slack_user": "ann", "val_fraction": 0.1},
                      "train": {"seq_len": 32}}, base_dir=tmp_path)
    messages: list[str] = []
    prepared = source_blocks(SetupContext(spec=spec, run=tmp_path, progress=messages.append), byte_tok)
    blocks, fingerprint = prepared.blocks, prepared.fingerprint
    assert isinstance(blocks, PackedBlocks) and len(fingerprint) == 32
    assert blocks.n_val_blocks >= 1 and 0 < blocks.trained_tokens < blocks.train_tokens
    assert blocks.train_batch(0, 0, 2).shape == (2, 3, 33)
    tokens, mask = blocks._tokens[:].tolist(), (blocks._mask[:] & 1).tolist()
    trained = bytes(t for t, m in zip(tokens, mask) if m and t < 256).decode()  # 256 is eos
    replies = [pair(e)[1] for e in iter_examples(DataSource.from_spec(spec.data))]
    assert trained == "".join(replies) and "pong 39" in trained  # only replies (and their eos) carry loss
