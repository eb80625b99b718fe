"""The Hub client (engine/hub/) against a Hub-compatible server on 127.0.0.1 (tests/support/hub_server.py),
through huggingface_hub's own client code: repo facts, a resumable download with progress, gated and
unknown repos, too little disk, offline said only when offline, estimate and doctor from a Hub id, datasets."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.hub import connection as conn
from engine.hub import datasets as hubdata
from engine.hub import download as hubdl
from engine.hub import repo as hubrepo
from hub_server import HubServer, go_online, tiny_model


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("hubmodel"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, model_folder: Path):
    with HubServer() as server:
        server.add_folder("org/tiny", model_folder, parameters=4321)
        go_online(monkeypatch, server)
        yield server


def test_repo_facts_then_a_download_with_progress_fills_the_cache(hub: HubServer, model_folder: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(hubdl, "CHUNK", 8192)  # pieces small enough for a 110 KB file to arrive in steps
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", constants.DOWNLOAD_CHUNK_SIZE)  # restored afterwards
    weights = (model_folder / "model.safetensors").read_bytes()
    files = {p.name: p.read_bytes() for p in model_folder.iterdir()} | {"pytorch_model.bin": b"x" * 5000,
                                                                         "onnx/model.safetensors": b"o" * 4000}
    sha = hub.add_files("org/both", files, parameters=4321)  # safetensors and .bin: only safetensors come
    info = hubrepo.repo_info("org/both")
    names = hubrepo.model_files(info)
    assert info.commit == sha and info.parameters == 4321 and not info.gated
    assert "model.safetensors" in names and "pytorch_model.bin" not in names and "tokenizer.json" in names
    assert "onnx/model.safetensors" not in names  # other formats in subfolders stay on the Hub
    facts = hubrepo.describe(info, names)
    assert facts["bytes"] == sum(len(files[n]) for n in names) and facts["cached"] is False
    seen: list[hubdl.Progress] = []
    hub.rate = 200_000  # about half a second: several looks at the progress
    snap = hubdl.fetch_model("org/both", progress=seen.append, interval=0.05)
    assert snap.commit == sha and (snap.folder / "model.safetensors").read_bytes() == weights
    assert not (snap.folder / "pytorch_model.bin").exists()
    assert seen[-1].finished and seen[-1].done_bytes == seen[-1].total_bytes == facts["bytes"]
    assert [p.done_bytes for p in seen] == sorted(p.done_bytes for p in seen) and len(seen) >= 3
    assert any(p.rate > 0 for p in seen) and "ETA" in next(p.line() for p in seen if p.eta_s is not None)
    assert hubrepo.describe(hubrepo.repo_info("org/both"), names)["cached"] is True
    assert (conn.cache_dir() / "models--org--both" / "refs" / "main").read_text() == sha
    assert not any("/pytorch_model.bin" in r.path for r in hub.requests if r.method == "GET")


def test_a_partial_file_left_by_a_kill_is_resumed_with_a_range_request(hub: HubServer, model_folder: Path) -> None:
    weights = (model_folder / "model.safetensors").read_bytes()
    blobs = conn.cache_dir() / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    half = len(weights) // 2
    (blobs / f"{hashlib.sha256(weights).hexdigest()}.incomplete").write_bytes(weights[:half])
    first: list[hubdl.Progress] = []
    snap = hubdl.fetch_model("org/tiny", progress=first.append, interval=0.05)
    assert (snap.folder / "model.safetensors").read_bytes() == weights
    assert hub.ranges("/model.safetensors") == [f"bytes={half}-"]  # only the rest was asked for
    assert first[0].done_bytes >= half  # progress starts at the bytes already there


def test_gated_repo_says_where_to_accept_the_licence_and_how_to_log_in(hub: HubServer, model_folder: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_folder("org/gated", model_folder, gated="manual", allowed_tokens=("hf_granted",))
    info = hubrepo.repo_info("org/gated")  # the facts are public, the files are not
    assert info.gated and hubrepo.describe(info, hubrepo.model_files(info))["gated"] is True
    for token, code, who in ((None, "401", "no token is set"), ("hf_other", "403", "no access")):
        go_online(monkeypatch, hub, token)
        with pytest.raises(UserError) as e:
            hubdl.fetch_model("org/gated")
        message = str(e.value)
        assert f"{hub.endpoint}/org/gated" in message and "hf auth login" in message and "HF_TOKEN" in message
        assert code in message and who in message and "offline" not in message
        if token:
            assert token not in message
    go_online(monkeypatch, hub, "hf_granted")
    assert (hubdl.fetch_model("org/gated").folder / "config.json").is_file()
    assert {r.authorization for r in hub.requests if "/org/gated/resolve/" in r.path} >= {"Bearer hf_granted"}


def test_unknown_repo_and_unknown_revision_are_named_without_saying_offline(hub: HubServer) -> None:
    with pytest.raises(UserError, match=r"no model 'org/nope' on the Hub .*check the id") as e:
        hubrepo.repo_info("org/nope")
    assert "offline" not in str(e.value)
    with pytest.raises(UserError, match="has no revision 'v9'"):
        hubrepo.repo_info("org/tiny", revision="v9")


def test_too_little_disk_names_both_numbers_before_any_byte_arrives(hub: HubServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hubdl, "free_bytes", lambda folder: 50_000)
    info = hubrepo.repo_info("org/tiny")
    need = hubdl.human(info.size(hubrepo.model_files(info)))
    with pytest.raises(UserError, match=rf"needs {need} more .* only 50.0 KB is free"):
        hubdl.fetch_model("org/tiny")
    assert not [r for r in hub.requests if "/resolve/" in r.path]


def test_offline_is_said_only_when_offline_and_with_the_reason(hub: HubServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.models.shape import read_config

    assert conn.reach().online
    cfg, where = read_config("org/tiny")  # online: config.json through huggingface_hub
    assert cfg["model_type"] == "gpt2" and "Hub" in where
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert conn.reach().reason.startswith("HF_HUB_OFFLINE is set")
    assert read_config("org/tiny")[0] == cfg  # cached now: offline reads the cache
    with pytest.raises(UserError, match=r"offline \(HF_HUB_OFFLINE is set\)"):
        read_config("org/other")
    with socket.socket() as s:  # a port nothing listens on: the Hub cannot be reached
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    assert not conn.reach(1.0).online and "cannot be reached" in conn.reach(1.0).reason
    with pytest.raises(UserError, match="offline .*cannot be reached") as e:
        hubrepo.repo_info("org/other", timeout=2)
    assert e.value.reason == "unreachable"


def test_estimate_reads_a_hub_models_config_through_the_hub(hub: HubServer, model_folder: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    from engine.models.shape import load_dims
    from tui.cli import main

    assert main(["estimate", "--model", "org/tiny", "--technique", "lora", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["params"] == load_dims(str(model_folder)).params
    assert any(r.path.endswith("/config.json") for r in hub.requests if r.method == "GET")


def test_doctor_says_reachable_token_set_never_the_token_and_the_cache(hub: HubServer,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from tui.cli import main

    hubdl.fetch_model("org/tiny")
    go_online(monkeypatch, hub, "hf_canary_doctor_7d1")
    assert main(["doctor", "--json"]) == 0
    text = capsys.readouterr().out
    h = json.loads(text)["hub"]
    assert h["online"] and h["token_set"] and h["token_from"] == "HF_TOKEN" and h["cache_bytes"] > 100_000
    assert h["hf_xet"] and "hf_canary_doctor_7d1" not in text
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "reachable" in text and "set (HF_TOKEN)" in text and "hf_canary_doctor_7d1" not in text


def test_the_model_steps_hub_facts(hub: HubServer) -> None:
    from tui.screens.model import hub_facts, hub_line

    facts, note = hub_facts("org/tiny")
    assert note is None and facts is not None and facts["parameters"] == 4321 and not facts["cached"]
    line = hub_line(facts)
    assert "KB on disk" in line and "4.32K parameters" in line and "not gated" in line and "not cached" in line
    assert hub_facts("org/nope")[1] and "no model" in hub_facts("org/nope")[1]
    assert hub_facts(".") == (None, None)  # a local folder asks nothing


CARD = """---
configs:
- config_name: en
  default: true
  data_files:
  - split: train
    path: en/train-*.jsonl
  - split: test
    path: en/test-*.jsonl
- config_name: fr
  data_files:
  - split: train
    path: fr/train-*.jsonl
---
# rows
"""


def test_a_dataset_by_id_downloads_the_files_its_subset_and_split_need(hub: HubServer) -> None:
    rows = b'{"text": "the cat sat"}\n' * 50
    sha = hub.add_files("org/rows", {"README.md": CARD.encode(), "en/train-0.jsonl": rows, "en/test-0.jsonl": rows,
                                     "fr/train-0.jsonl": rows}, kind="dataset")
    seen: list[hubdl.Progress] = []
    folder = hubdata.fetch_dataset("org/rows", subset="fr", split="train", progress=seen.append)
    assert folder == conn.cache_dir() / "datasets--org--rows" / "snapshots" / sha
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == \
        ["README.md", "fr/train-0.jsonl"]
    assert seen[-1].finished and seen[-1].kind == "dataset"
    assert hubdata.fetch_dataset("org/rows", split="test") == folder  # the default subset's test split
    assert (folder / "en" / "test-0.jsonl").is_file() and not (folder / "en" / "train-0.jsonl").exists()
    with pytest.raises(UserError, match="no subset 'de'; its subsets: en, fr"):
        hubdata.fetch_dataset("org/rows", subset="de")
    hub.add_files("org/plain", {"data/train.parquet": b"P" * 100, "data/validation.parquet": b"V" * 100},
                  kind="dataset")
    plain = hubdata.fetch_dataset("org/plain", split="validation")
    assert [p.name for p in (plain / "data").iterdir()] == ["validation.parquet"]
    with pytest.raises(UserError, match="no dataset 'org/none'"):
        hubdata.fetch_dataset("org/none")


def test_the_data_check_counts_with_a_hub_models_tokenizer(hub: HubServer, model_folder: Path) -> None:
    from engine.estimate.data_size import load_tokenizer

    tokenizer = load_tokenizer("org/tiny")
    assert tokenizer is not None and len(tokenizer) == 320
    assert load_tokenizer("org/nope") is None  # the count falls back to bytes per token


def test_the_settings_a_run_downloads_and_how_progress_reads(tmp_path: Path) -> None:
    from engine.run import hub_fetch
    from engine.runfolder import events as ev
    from finetune_helpers import finetune_spec
    from tui.commands.attach import describe

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n" * 50)
    spec = finetune_spec("distill", "org/student", corpus, options={"teacher": "org/teacher"})
    assert hub_fetch.hub_settings(spec) == [("model.path", "org/student"), ("options.teacher", "org/teacher")]
    local = finetune_spec("full", tmp_path, corpus)
    assert hub_fetch.hub_settings(local) == []
    event = ev.Download(repo="org/tiny", field="model.path", commit="a" * 40, done_bytes=450_000,
                        total_bytes=1_000_000, files_done=3, files_total=5, rate=150_000.0, eta_s=3.7)
    assert "org/tiny" in describe(event) and "45%" in describe(event) and "ETA 4s" in describe(event)
    assert "█" * 9 in describe(event) and "450.0 KB of 1.0 MB" in describe(event)


def test_foreground_draws_a_download_bar(capsys: pytest.CaptureFixture) -> None:
    from engine.run.process import echo
    from engine.runfolder import events as ev

    echo(ev.Download(repo="org/tiny", field="model.path", commit="a" * 40, done_bytes=500, total_bytes=1000,
                     files_done=1, files_total=2, rate=100.0, eta_s=5.0).to_dict())
    line = capsys.readouterr().out
    assert line.startswith("[download] org/tiny ") and "█" * 15 + "░" * 15 in line and "50%" in line


def test_runs_and_the_dashboard_show_a_download_in_progress(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os

    from engine.processes import pid_start_time
    from engine.runfolder import folder as runfolder
    from engine.runfolder.status import Status
    from tui.cli import main
    from tui.screens.run_history import RunHistory

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / runfolder.SPEC).write_text('technique = "full"\n')
    download = {"repo": "org/tiny", "done_bytes": 450, "total_bytes": 1000, "finished": False}
    runfolder.write_status(run, {"state": "starting", "pid": os.getpid(), "pid_start": pid_start_time(os.getpid()),
                                 "step": 0, "message": "downloading org/tiny 45%", "download": download})
    assert main(["--runs-dir", str(tmp_path / "runs"), "runs"]) == 0
    assert "↓45%" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path / "runs"), "runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["download"]["done_bytes"] == 450
    history = RunHistory()
    history.apply_status(Status(state="starting", step=0, message="downloading", download=download))
    assert history.download == download
    history.apply_status(Status(state="running", step=1, message="training"))
    assert history.download is None


def test_a_stop_request_interrupts_the_download_and_the_next_one_completes_it(hub: HubServer) -> None:
    info = hubrepo.repo_info("org/tiny")
    names = hubrepo.model_files(info)
    with pytest.raises(hubdl.DownloadStopped):
        hubdl.download(info, names, should_stop=lambda: True)
    assert hubrepo.missing(info, names)
    assert (hubdl.download(info, names) / "model.safetensors").is_file() and not hubrepo.missing(info, names)


def test_a_runs_dataset_by_id_is_pinned_reported_and_read_from_the_cache_offline(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.run import hub_fetch
    from engine.runfolder import events as ev

    rows = b'{"text": "the cat sat"}\n' * 50
    first = hub.add_files("org/rows", {"train.jsonl": rows, "test.jsonl": rows}, kind="dataset")
    emitted: list[ev.Event] = []
    statuses: list[str] = []
    folder = hub_fetch.fetch_data(tmp_path, "org/rows", None, "train", emitted.append,
                                  lambda message, download: statuses.append(message))
    assert [p.name for p in folder.iterdir()] == ["train.jsonl"] and folder.name == first
    assert hub_fetch.read_pins(tmp_path)["data.path"] == {"repo": "org/rows", "commit": first}
    assert isinstance(emitted[-1], ev.Download) and emitted[-1].finished and emitted[-1].field == "data.path"
    assert statuses[-1].startswith("downloaded org/rows")
    hub.add_files("org/rows", {"train.jsonl": rows * 2}, kind="dataset")  # main moves on: the run keeps its commit
    assert hub_fetch.fetch_data(tmp_path, "org/rows", None, "train", emitted.append, lambda m, d: None) == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_fetch.fetch_data(tmp_path, "org/rows", None, "train", emitted.append, lambda m, d: None) == folder
    with pytest.raises(UserError, match=r"not in the Hub cache and this machine is offline \(HF_HUB_OFFLINE"):
        hub_fetch.fetch_data(tmp_path / "other", "org/elsewhere", None, None, emitted.append, lambda m, d: None)


def test_a_chat_dataset_by_id_is_read_counted_and_trained_from_its_pinned_snapshot(
        hub: HubServer, tmp_path: Path) -> None:
    from engine import spec as spec_mod
    from engine.data import sources
    from engine.data.prepare import prepare
    from engine.run import hub_fetch, job
    from engine.run.trainer import Trainer
    from chat_helpers import many, qwen2_model, train_bpe
    from run_helpers import events

    lines = "".join(json.dumps({"messages": c}) + "\n" for c in many(60)).encode()
    sha = hub.add_files("org/chats", {"README.md": b"# Chats\nNot rows.\n", "data/train.jsonl": lines,
                                      "data/test.jsonl": lines[:2000]}, kind="dataset")
    tok = train_bpe(tmp_path / "tok")
    model = qwen2_model(tmp_path / "model", tok)
    source = sources.DataSource("org/chats", format="hub")
    assert source.kind == "table" and source.layout().format == "messages"  # README.md is not data
    assert source.files_found.files[0].name == "train.jsonl" and sha in str(source.files_found.root)
    expected = prepare(source, tok, 160, val_fraction=0.1, cache_dir=tmp_path / "c").report
    assert expected.examples == 60
    sources._snapshots.clear()  # the run fetches (and pins) it itself
    s = spec_mod.from_dict({"technique": "full", "model": {"path": str(model)},
                            "data": {"path": "org/chats", "format": "hub", "val_fraction": 0.1},
                            "train": {"seq_len": 160, "batch_size": 4, "max_steps": 2, "threads": 1},
                            "eval": {"every": 0}, "checkpoint": {"every": 0}})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    assert hub_fetch.read_pins(run)["data.path"] == {"repo": "org/chats", "commit": sha}
    assert any(e["field"] == "data.path" and e.get("finished") for e in events(run, "download"))
    ready = next(e for e in events(run, "state") if e.get("message") == "model ready")
    assert (ready["data"]["tokens"], ready["data"]["examples"]) == (expected.tokens, 60)
