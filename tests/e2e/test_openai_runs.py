"""Hosted fine-tuning as a user runs it: `llm-wizard train` starts the detached job that follows the OpenAI job
(tests/support/openai_server.py on 127.0.0.1, through the official client); a SIGKILL of that job and
`train --resume` follow the same remote job again (one job created, each file uploaded once, no event
written twice); `control stop` asks first and cancels the job; the key reaches no file of the run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import processes, spec
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from openai_helpers import canary_key, chat_file, files_holding, openai_spec, use_server
from openai_server import OpenAIServer
from run_helpers import wait_for

pytestmark = pytest.mark.slow
pytest.importorskip("openai")


def _cli(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120,
                          stdin=stdin)


def _start(tmp_path: Path, data: Path) -> tuple[Path, int]:
    spec_file = tmp_path / "hosted.toml"
    spec_file.write_text(spec.to_toml(openai_spec(data)))
    done = _cli("train", str(spec_file), "--json", "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    return Path(info["path"]), info["pid"]


def _remote_ids(run: Path) -> list[str]:
    return [e.extra["remote_id"] for e in ev.read(run) if "remote_id" in e.extra]


def test_sigkill_and_resume_follow_the_same_remote_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = canary_key()
    with OpenAIServer(key=key, steps=40, step_s=0.2) as api:
        use_server(monkeypatch, api.base_url, key)
        run, pid = _start(tmp_path, chat_file(tmp_path, 30))
        assert (api.created_jobs, api.uploads) == (1, 2)  # `train` returned once the job existed
        wait_for(lambda: any(isinstance(e, ev.Metrics) for e in ev.read(run)), 60, "the first metrics")
        os.kill(pid, signal.SIGKILL)  # no goodbye: the remote job goes on
        wait_for(lambda: not processes.pid_alive(pid), 30, "the job's end")
        assert runfolder.read_status(run)["state"] == "crashed"
        before = len([e for e in ev.read(run) if isinstance(e, ev.Metrics)])

        resumed = _cli("train", "--resume", run.name, "--json", "--runs-dir", str(tmp_path / "runs"))
        assert resumed.returncode == 0, resumed.stderr
        new_pid = json.loads(resumed.stdout)["pid"]
        wait_for(lambda: runfolder.read_status(run).get("state") == "done", 60, "the job's success")
        wait_for(lambda: not processes.pid_alive(new_pid), 30, "the follower's exit")

        assert (api.created_jobs, api.uploads) == (1, 2)  # never billed twice, nothing uploaded again
        ids = _remote_ids(run)
        assert len(ids) == len(set(ids))  # no remote event written twice
        steps = [e.step for e in ev.read(run) if isinstance(e, ev.Metrics)]
        assert steps == list(range(1, 41)) and 0 < before < 40  # the kill landed mid-run; nothing lost
        assert any(isinstance(e, ev.State) and "following OpenAI job ftjob-00000001 again" in e.message
                   for e in ev.read(run))
        assert json.loads((run / "final" / "openai.json").read_text())["job_id"] == "ftjob-00000001"
        runs = json.loads(_cli("runs", "--json", "--runs-dir", str(tmp_path / "runs")).stdout)
        assert [(r["technique"], r["state"], r["step"]) for r in runs] == [("openai", "done", 40)]
        chat = subprocess.run([sys.executable, "-m", "tui.cli", "chat", run.name, "--runs-dir", str(tmp_path / "runs")],
                              input="hello there\n/exit\n", capture_output=True, text=True, timeout=120)
        assert chat.returncode == 0 and "echo: hello there" in chat.stdout, chat.stderr
        assert "through the API" in chat.stderr and api.chats[-1]["model"].startswith("ft:gpt-4o-mini")
        assert files_holding(run, key) == []  # job.log, events, status, remote.json, final/, tb/: no key


def test_control_stop_asks_then_cancels_and_pause_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = canary_key()
    with OpenAIServer(key=key, steps=10_000, step_s=0.05) as api:
        use_server(monkeypatch, api.base_url, key)
        run, pid = _start(tmp_path, chat_file(tmp_path, 20))
        runs = ["--runs-dir", str(tmp_path / "runs")]
        paused = _cli("control", run.name, "pause", *runs)
        assert paused.returncode == 1 and "billed by trained tokens" in paused.stderr
        unasked = _cli("control", run.name, "stop", *runs)  # no terminal to ask on: refused without --yes
        assert unasked.returncode == 2 and "Cancel the OpenAI fine-tuning job?" in unasked.stderr
        assert "--yes" in unasked.stderr and next(iter(api.jobs.values())).status == "running"
        stopped = _cli("control", run.name, "stop", "--yes", "--json", *runs)
        assert stopped.returncode == 0, stopped.stderr
        assert "cancelling OpenAI job ftjob-00000001" in json.loads(stopped.stdout)["message"]
        wait_for(lambda: not processes.pid_alive(pid), 30, "the follower's exit")
        assert next(iter(api.jobs.values())).status == "cancelled"
        assert runfolder.read_status(run)["state"] == "stopped"
        assert files_holding(run, key) == []
