"""Runs whose model is a Hub id, served by a Hub-compatible server on 127.0.0.1 (tests/support/hub_server.py):
the detached job downloads it before the first step with progress (events and status.json), records the
commit it resolved, survives a SIGKILL mid-download (`train --resume` fetches the rest of the same commit,
even after main moved on, then trains), and never writes the token anywhere in the run folder."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from engine import processes
from engine.hub import connection as conn
from engine.run import hub_fetch
from engine.runfolder import folder as runfolder
from finetune_helpers import finetune_spec
from hub_server import HubServer, go_online, tiny_model
from run_helpers import events, launch, wait_exit, wait_for

pytestmark = pytest.mark.slow

CANARY = "hf_CANARYtoken0123456789abcdef"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 6.6 MB of weights: several of the 1 MiB pieces a download writes, so progress moves within the
    file and a kill lands mid-file."""
    return tiny_model(tmp_path_factory.mktemp("hubrun"), width=256, layers=2)


def _spec(model_folder: Path, **train: int):
    return finetune_spec("full", "org/tiny", model_folder.parent / "corpus.txt",  # type: ignore[arg-type]
                         train={"max_steps": 4, "batch_size": 4, **train}, checkpoint={"every": 2, "keep": 2})


def test_a_run_from_a_hub_id_downloads_with_progress_then_trains_and_never_writes_the_token(
        tmp_path: Path, model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer(rate=2_000_000) as hub:  # about three seconds of download: several progress events
        sha = hub.add_folder("org/tiny", model_folder, gated="auto", allowed_tokens=(CANARY,))
        go_online(monkeypatch, hub, CANARY)
        run, pid = launch(_spec(model_folder), tmp_path / "runs")
        try:
            wait_for(lambda: (runfolder.read_status(run).get("download") or {}).get("done_bytes"), 120,
                     "download progress in status.json")
            assert wait_exit(pid, 300) == 0, (run / runfolder.LOG).read_text()[-3000:]
        finally:
            if processes.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    downloads = events(run, "download")
    assert len(downloads) >= 3 and downloads[-1]["finished"] and all(e["commit"] == sha for e in downloads)
    assert downloads[-1]["done_bytes"] == downloads[-1]["total_bytes"] > 6_000_000
    assert [e["done_bytes"] for e in downloads] == sorted(e["done_bytes"] for e in downloads)
    assert any(e.get("eta_s") for e in downloads) and any(e["rate"] > 0 for e in downloads)
    kinds = [e["type"] for e in events(run)]
    assert kinds.index("download") < kinds.index("metrics") and events(run, "done")[-1]["state"] == "done"
    assert hub_fetch.read_pins(run) == {"model.path": {"repo": "org/tiny", "commit": sha}}
    assert {r.authorization for r in hub.requests if "/resolve/" in r.path} == {f"Bearer {CANARY}"}
    for path in run.rglob("*"):  # the canary: no file of the run folder (job.log, events, status) holds it
        assert not path.is_file() or CANARY.encode() not in path.read_bytes(), path


def test_sigkill_mid_download_then_train_resume_fetches_the_rest_of_the_same_commit_and_trains(
        tmp_path: Path, model_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from tui.cli import main

    with HubServer(rate=1_200_000) as hub:  # about 5 s for the weights
        first = hub.add_folder("org/tiny", model_folder)
        go_online(monkeypatch, hub)
        run, pid = launch(_spec(model_folder), tmp_path / "runs")
        try:
            wait_for(lambda: (runfolder.read_status(run).get("download") or {}).get("done_bytes", 0) > 2_500_000,
                     180, "2.5 MB downloaded")
            os.kill(pid, signal.SIGKILL)
            assert wait_exit(pid) == -signal.SIGKILL
        finally:
            if processes.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        blobs = conn.cache_dir() / "models--org--tiny" / "blobs"
        partial = [p for p in blobs.glob("*.incomplete") if p.stat().st_size >= 1 << 20]
        assert partial, "the kill left no partial weights"
        kept = partial[0].stat().st_size
        newer = {p.name: p.read_bytes() for p in model_folder.iterdir()} | {"config.json": b"{}"}
        hub.add_files("org/tiny", newer)  # main moves on: the run keeps the commit it started with
        hub.rate = None
        assert main(["train", "--resume", str(run), "--json"]) == 0
        assert "no checkpoint yet" in capsys.readouterr().err
        pid2 = runfolder.read_status(run)["pid"]
        wait_for(lambda: runfolder.read_status(run).get("state") in ("done", "failed", "crashed"), 300, "the end")
        assert runfolder.read_status(run)["state"] == "done", (run / runfolder.LOG).read_text()[-3000:]
    starts = [int(r.split("=")[1].rstrip("-")) for r in hub.ranges("/model.safetensors") if r]
    assert starts == [kept]  # the rest only
    resolved = {r.path.split("/resolve/")[1].split("/")[0] for r in hub.requests if "/resolve/" in r.path}
    assert resolved == {first}  # every file of the first commit, never the newer main
    assert hub_fetch.read_pins(run)["model.path"]["commit"] == first
    assert json.loads((conn.cache_dir() / "models--org--tiny" / "snapshots" / first / "config.json").read_text())
    assert events(run, "download")[-1]["finished"] and events(run, "metrics") and pid2
