"""Every container of rows the product reads, written by the tests and read back whole, each fault named by
file and line; Hub-style and save_to_disk folders resolved to their files and splits (engine/data/containers.py)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from engine.data import file_rows
from engine.data.containers import first_rows, iter_rows, locate
from engine.errors import UserError

RECORDS = [
    {"prompt": "Say hi", "response": "hi"},
    {"prompt": "Two\nlines, \"quoted\"", "response": "ünïcode ✓"},
    {"prompt": "a\ttab", "response": "last"},
]


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def write(path: Path, records: list[dict] = RECORDS) -> Path:
    """`records` in the container that `path`'s name says."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith((".jsonl", ".ndjson")):
        path.write_bytes(jsonl_bytes(records))
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(jsonl_bytes(records))
    elif name.endswith(".jsonl.zst"):
        with pa.CompressedOutputStream(str(path), "zstd") as handle:
            handle.write(jsonl_bytes(records))
    elif name.endswith(".json"):
        path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    elif name.endswith((".csv", ".tsv")):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]), delimiter="\t" if name.endswith(".tsv") else ",")
            writer.writeheader()
            writer.writerows(records)
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    elif name.endswith(".arrow"):  # the IPC file format; save_to_disk below writes the stream format
        table = pa.Table.from_pylist(records)
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
    return path


def values(data) -> list[dict]:  # noqa: ANN001
    return [row.values for row in iter_rows(data)]


@pytest.mark.parametrize("name, kind", [
    ("rows.jsonl", "jsonl"), ("rows.ndjson", "jsonl"), ("rows.jsonl.gz", "jsonl"), ("rows.jsonl.zst", "jsonl"),
    ("rows.json", "json"), ("rows.csv", "csv"), ("rows.tsv", "tsv"), ("rows.parquet", "parquet"),
    ("rows.arrow", "arrow"),
])
def test_each_container_reads_back_the_same_records(tmp_path: Path, name: str, kind: str) -> None:
    path = write(tmp_path / name)
    data = locate(path)
    assert (data.kind, data.layout, data.files, data.split, data.splits) == (kind, "file", (path,), "", ())
    rows = list(iter_rows(data))
    assert [r.values for r in rows] == RECORDS
    assert 0 < rows[0].done <= rows[-1].done <= data.total_bytes == path.stat().st_size
    # A folder of such files reads them all, in name order.
    write(tmp_path / "folder" / name.replace("rows", "b"), RECORDS[:1])
    write(tmp_path / "folder" / name.replace("rows", "a"), RECORDS[1:])
    folder = locate(tmp_path / "folder")
    assert (folder.kind, folder.layout, len(folder.files)) == (kind, "folder", 2)
    assert values(folder) == RECORDS[1:] + RECORDS[:1]


@pytest.mark.parametrize("name", ["rows.jsonl.gz", "rows.jsonl.zst"])
def test_compressed_jsonl_counts_compressed_bytes_and_names_lines(tmp_path: Path, name: str) -> None:
    many = [{"n": i, "text": f"line {i} " * 20} for i in range(5000)]
    path = write(tmp_path / name, many)
    rows = list(iter_rows(locate(path)))
    assert [r.values for r in rows] == many
    assert rows[-1].done == path.stat().st_size < len(jsonl_bytes(many)) // 5  # compressed, not decompressed
    assert rows[10].where == f"{path}:11"
    broken = write(tmp_path / ("broken" + name[4:]), [{"a": 1}])
    broken.write_bytes(broken.read_bytes()[:-4])  # cut short: a gzip without its end, a zstd frame cut
    with pytest.raises(UserError, match="cannot decompress"):
        list(iter_rows(locate(broken)))


def test_json_array_names_a_bad_element_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text('[\n  {"instruction": "a",\n   "output": "b"},\n  "oops",\n  {"instruction": "c"}\n]\n')
    rows = iter_rows(locate(path))
    first = next(rows)
    assert (first.values, first.where) == ({"instruction": "a", "output": "b"}, f"{path}:2")
    with pytest.raises(UserError, match=rf"^{path}:4: element 2 of the list is a string, expected an object"):
        next(rows)
    path.write_text('[\n  {"a": 1},\n  {"a": }\n]')
    with pytest.raises(UserError, match=rf"^{path}:3:9: not valid JSON"):
        values(locate(path))
    path.write_text('[{"a": 1}] x')
    with pytest.raises(UserError, match=rf"^{path}:1:12: not valid JSON \(extra data"):
        values(locate(path))
    path.write_text(" [ ] ")
    with pytest.raises(UserError, match="has no rows"):
        values(locate(path))


def test_json_object_holding_one_list_and_json_lines_in_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"version": "1.0", "tags": [], "data": RECORDS}, indent=1))
    rows = list(iter_rows(locate(path)))
    assert [r.values for r in rows] == RECORDS
    assert rows[1].where == f"{path}:9"  # "data": [ on line 4, records of 4 lines from line 5
    path.write_text(json.dumps({"train": RECORDS, "test": RECORDS}))
    with pytest.raises(UserError, match="several lists \\('train', 'test'\\)"):
        values(locate(path))
    path.write_bytes(jsonl_bytes(RECORDS))  # JSON Lines named .json
    rows = list(iter_rows(locate(path)))
    assert [r.values for r in rows] == RECORDS and rows[2].where == f"{path}:3"


def test_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}, features=features)
    test = datasets.Dataset.from_dict({"text": ["meh"], "label": [0]}, features=features)
    train.save_to_disk(tmp_path / "one")
    data = locate(tmp_path / "one")
    assert (data.kind, data.layout) == ("arrow", "save_to_disk")
    assert values(data) == [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"},
                            {"text": "fine", "label": "pos"}]  # a class label is its name
    datasets.DatasetDict(train=train, test=test).save_to_disk(tmp_path / "dict")
    data = locate(tmp_path / "dict", split="test")
    assert (data.split, data.splits, data.files[0].parent.name) == ("test", ("train", "test"), "test")
    assert values(data) == [{"text": "meh", "label": "neg"}]
    with pytest.raises(UserError, match="has no split 'validation'; its splits: train, test"):
        locate(tmp_path / "dict", split="validation")


def hub_folder(root: Path, readme: str = "# A dataset card\n\nSome words, not rows.\n") -> Path:
    root.mkdir(parents=True)
    (root / "README.md").write_text(readme)
    (root / ".gitattributes").write_text("*.jsonl filter=lfs diff=lfs merge=lfs -text\n")
    return root


def test_hub_folder_reads_data_files_not_the_readme_and_picks_the_split(tmp_path: Path) -> None:
    root = hub_folder(tmp_path / "clone")
    write(root / "data" / "train.jsonl", RECORDS[:2])
    write(root / "data" / "test.jsonl", RECORDS[2:])
    data = locate(root)
    assert (data.kind, data.layout, data.split, data.splits) == ("jsonl", "hub_folder", "train", ("train", "test"))
    assert data.files == (root / "data" / "train.jsonl",)
    assert values(data) == RECORDS[:2]
    assert values(locate(root, split="test")) == RECORDS[2:]
    assert locate(root, split="testing").files == (root / "data" / "test.jsonl",)  # the Hub's keyword
    with pytest.raises(UserError, match=r"has no split 'validation'; its splits: train, test"):
        locate(root, split="validation")
    # Without split names every data file is train, the README still not.
    (root / "data" / "test.jsonl").rename(root / "data" / "more.jsonl")
    (root / "data" / "train.jsonl").rename(root / "data" / "some.jsonl")
    data = locate(root)
    assert (data.split, data.splits, values(data)) == ("train", ("train",), RECORDS[2:] + RECORDS[:2])


def test_readme_configs_pick_files_by_subset(tmp_path: Path) -> None:
    root = hub_folder(tmp_path / "configs", """---
license: mit
configs:
- config_name: chat
  data_files:
  - split: train
    path: chat/train-*.jsonl
  - split: test
    path: chat/held_out.jsonl
  default: true
- config_name: raw
  data_files: "raw/*.csv"
---
# Two configs
""")
    write(root / "chat" / "train-1.jsonl", RECORDS[:1])
    write(root / "chat" / "train-2.jsonl", RECORDS[1:2])
    write(root / "chat" / "held_out.jsonl", RECORDS[2:])
    write(root / "raw" / "all.csv")
    chat = locate(root)
    assert (chat.kind, chat.splits, values(chat)) == ("jsonl", ("train", "test"), RECORDS[:2])
    assert values(locate(root, split="test")) == RECORDS[2:]
    raw = locate(root, subset="raw")
    assert (raw.kind, raw.split, raw.splits, values(raw)) == ("csv", "train", ("train",), RECORDS)
    with pytest.raises(UserError, match="no config 'other'; its configs: chat, raw"):
        locate(root, subset="other")


def test_parquet_converted_layouts(tmp_path: Path) -> None:
    root = hub_folder(tmp_path / "sharded")
    write(root / "data" / "train-00000-of-00002.parquet", RECORDS[:1])
    write(root / "data" / "train-00001-of-00002.parquet", RECORDS[1:2])
    write(root / "data" / "test-00000-of-00001.parquet", RECORDS[2:])
    data = locate(root)
    assert (data.kind, data.splits, len(data.files), values(data)) == ("parquet", ("train", "test"), 2, RECORDS[:2])
    converted = tmp_path / "refs-convert-parquet"  # the Hub's parquet branch: {config}/{split}/NNNN.parquet
    write(converted / "default" / "train" / "0000.parquet", RECORDS[:2])
    write(converted / "default" / "validation" / "0000.parquet", RECORDS[2:])
    data = locate(converted, split="dev")
    assert (data.layout, data.split, data.splits) == ("hub_folder", "validation", ("train", "validation"))
    assert values(data) == RECORDS[2:]
    assert values(locate(converted, subset="default")) == RECORDS[:2]


def test_folder_of_several_kinds_is_refused_naming_them(tmp_path: Path) -> None:
    write(tmp_path / "mixed" / "a.jsonl")
    write(tmp_path / "mixed" / "b.csv")
    (tmp_path / "mixed" / "LICENSE").write_text("MIT\n")  # documentation, not a kind of data
    with pytest.raises(UserError, match=r"several kinds \(csv: 1 file \(b.csv\); jsonl: 1 file \(a.jsonl\)\)"):
        locate(tmp_path / "mixed")


def test_text_files_slack_and_single_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("first\nsecond\n")
    (tmp_path / "notes" / "b.md").write_text("# b\n")
    data = locate(tmp_path / "notes")
    assert (data.kind, data.layout, [f.name for f in data.files]) == ("text", "folder", ["a.txt", "b.md"])
    assert values(data) == [{"text": "first\nsecond\n", "ends": True}, {"text": "# b\n", "ends": True}]
    assert locate(tmp_path / "notes" / "b.md").kind == "text"
    clone = hub_folder(tmp_path / "tiny_shakespeare", "---\nlicense: cc0\n---\n# Card\n")  # a Hub text dataset
    (clone / "input.txt").write_text("First Citizen:\n")
    data = locate(clone)
    assert (data.kind, data.layout, data.files) == ("text", "hub_folder", (clone / "input.txt",))
    slack = tmp_path / "export"
    (slack / "general").mkdir(parents=True)
    (slack / "users.json").write_text(json.dumps([{"id": "U1", "name": "ann"}]))
    (slack / "general" / "2024-01-31.json").write_text(json.dumps([{"user": "U1", "text": "hi", "ts": "1"}], indent=1))
    (slack / "general" / "2024-02-01.json").write_text("[]")
    data = locate(slack)
    assert (data.kind, data.files[0].name) == ("slack", "users.json")
    assert [(r.values["text"], r.where) for r in iter_rows(data)] == [("hi", f"{data.files[1]}:2")]


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "file is empty"),
    ("blank.jsonl", b"\n\n", "has no rows"),
    ("bad.jsonl", b'{"a": 1}\n{"a": 1,}\n', r"bad.jsonl:2:9: not valid JSON"),
    ("list.jsonl", b'{"a": 1}\n[1]\n', r"list.jsonl:2: expected a JSON object per line, got an array"),
    ("latin.jsonl", '{"a": "café"}\n'.encode("latin-1"), r"is not UTF-8: invalid byte 0xE9 at line 1"),
    ("nul.csv", b"a,b\n1,\0\n", "NUL byte"),
    ("header.csv", b"a,b\n", "has a header but no rows"),
    ("latin.json", '[{"a": "café"}]'.encode("latin-1"), r"is not UTF-8: invalid byte 0xE9 at line 1"),
    ("scalar.json", b"42", r"scalar.json:1:1: expected a JSON array of objects"),
    ("bad.parquet", b"PAR1 not really", "cannot read .* as Parquet"),
    ("bad.arrow", b"ARROW1 nor this", "cannot read .* as Arrow"),
])
def test_faults_are_short_messages_naming_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        values(locate(path))
    assert str(path) in str(err.value)


def test_first_rows_stops_early_on_a_big_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "big.jsonl", [{"text": f"row {i} " + "x" * 100} for i in range(60_000)])
    read = [0]
    opened = file_rows.open_binary

    class Counting:
        def __init__(self, handle) -> None:  # noqa: ANN001
            self.handle = handle

        def read(self, n: int = -1) -> bytes:
            block = self.handle.read(n)
            read[0] += len(block)
            return block

        def tell(self) -> int:
            return self.handle.tell()

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    monkeypatch.setattr(file_rows, "open_binary", lambda p: Counting(opened(p)))
    data = locate(path)
    rows = first_rows(data, 5)
    assert [r.values["text"][:5] for r in rows] == ["row 0", "row 1", "row 2", "row 3", "row 4"]
    assert read[0] <= file_rows.BLOCK_BYTES < data.total_bytes // 4  # one block of a 6.6 MB file
    read[0] = 0
    assert sum(1 for _ in iter_rows(data)) == 60_000 and read[0] == data.total_bytes
