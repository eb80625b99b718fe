"""Hosted fine-tuning against an OpenAI-compatible service on 127.0.0.1 (tests/support/openai_server.py),
through the official `openai` client, in this process: upload, job creation, the job's events and metrics in
events.jsonl, final/openai.json, chat with the ft: model, controls (stop cancels, pause and lr refused), the
service's validation error shown as it said it, and the key in no file of the run folder."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine import spec
from engine.run import job, remote
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.serve.openai_chat import OpenAIChat, hosted
from engine.track import compare
from openai_helpers import canary_key, chat_file, files_holding, openai_spec, use_server
from openai_server import OpenAIServer
from run_helpers import wait_for

pytest.importorskip("openai")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch):
    key = canary_key()
    with OpenAIServer(key=key) as server:
        use_server(monkeypatch, server.base_url, key)
        server.canary = key  # type: ignore[attr-defined]
        yield server


def follow(run: Path, commands_from: int | None = None) -> int:
    """The job process's loop for a hosted run (engine.run.job.run_job dispatches to it), in this process
    without the job's signal handlers (tests/e2e/test_openai_runs.py runs the real detached job)."""
    return remote.Follower(run, spec.load(run / runfolder.SPEC), commands_from=commands_from).run_job()


def _events(run: Path, kind: type) -> list:
    return [e for e in ev.read(run) if isinstance(e, kind)]


def test_a_job_runs_to_an_ft_model_with_its_metrics_in_the_run_folder(api: OpenAIServer, tmp_path: Path) -> None:
    run = job.create(openai_spec(chat_file(tmp_path, 30, "messages"), learning_rate_multiplier=0.5), tmp_path / "runs")
    assert follow(run) == 0
    assert (api.created_jobs, api.uploads) == (1, 2)  # one job; training and validation files
    body = next(iter(api.jobs.values())).body
    assert body["suffix"] == "test" and body["metadata"] == {"llm_wizard_run": run.name}
    assert body["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto",
                                                               "learning_rate_multiplier": 0.5}
    uploaded = api.files[body["training_file"]]["content"].decode().splitlines()
    assert uploaded == (run / "openai" / "train.jsonl").read_text().splitlines() and len(uploaded) == 24
    assert json.loads(uploaded[0])["messages"][2] == {"role": "assistant", "content": "Sure.", "weight": 0}

    metrics = _events(run, ev.Metrics)
    assert [m.step for m in metrics] == [1, 2, 3, 4, 5, 6] and metrics[-1].epoch == 2.0
    assert metrics[0].train_loss > metrics[-1].train_loss and metrics[0].train_lr is None
    assert [e.step for e in _events(run, ev.Eval)] == [2, 4, 6]  # the validation file's loss
    assert [c.step for c in _events(run, ev.Checkpoint)] == [3, 6]
    assert any(isinstance(e, ev.Alert) and e.kind == "cost" and "billed tokens" in e.message for e in ev.read(run))
    done = _events(run, ev.Done)
    assert len(done) == 1 and done[0].state == "done" and done[0].final == str(run / "final" / "openai.json")
    final = json.loads((run / "final" / "openai.json").read_text())
    assert final["model"].startswith("ft:gpt-4o-mini-2024-07-18:") and final["job_id"] == "ftjob-00000001"
    status = runfolder.read_status(run)
    assert (status["state"], status["step"], status["technique"], status["total_steps"]) == ("done", 6, "openai", 6)
    assert runfolder.run_info(run).loss == metrics[-1].train_loss  # `runs` shows it like any run
    summary = compare.summarize(run)  # `runs compare` too: no throughput is known, and none is made up
    assert (summary.steps, summary.tok_per_s, summary.best_step) == (6, None, 6)
    assert (run / "tb").is_dir()  # TensorBoard follows the hosted job's metrics as a local run's

    assert hosted(run)
    chat = OpenAIChat(run, system="Be brief.")
    assert chat.reply("hello there") == "echo: hello there"
    assert api.chats[-1]["model"] == final["model"] and api.chats[-1]["messages"][0]["role"] == "system"
    assert OpenAIChat(run, checkpoint_ref="3").source.endswith(":ckpt-step-3")
    assert files_holding(run, api.canary) == []  # type: ignore[attr-defined]


def test_the_services_validation_error_is_shown_as_it_said_it(api: OpenAIServer, tmp_path: Path) -> None:
    api.reject = "Invalid file format. Line 7, message 2: content is empty"
    run = job.create(openai_spec(chat_file(tmp_path)), tmp_path / "runs")
    assert follow(run) == 2
    error = _events(run, ev.Error)[-1]
    assert error.kind == "user" and "Line 7, message 2: content is empty" in error.message
    assert "(training_file) [invalid_training_file]" in error.message
    assert runfolder.read_status(run)["state"] == "failed" and _events(run, ev.Done)[-1].exit_code == 2


def test_a_refused_request_and_a_refused_key_are_user_errors_without_the_key(api: OpenAIServer, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run = job.create(openai_spec(chat_file(tmp_path), model="gpt-5-turbo"), tmp_path / "runs")
    assert follow(run) == 2
    assert "Model gpt-5-turbo is not available for fine-tuning" in _events(run, ev.Error)[-1].message
    wrong = canary_key()
    monkeypatch.setenv("OPENAI_API_KEY", wrong)  # the service echoes a wrong key in its 401
    run = job.create(openai_spec(chat_file(tmp_path)), tmp_path / "runs")
    assert follow(run) == 2
    assert "refused the key (401)" in _events(run, ev.Error)[-1].message
    assert any(key == f"Bearer {wrong}" for _, _, key in api.requests)  # it was sent, and written nowhere
    assert files_holding(run, wrong) == []


def test_stop_cancels_the_remote_job_and_pause_and_lr_are_refused(api: OpenAIServer, tmp_path: Path) -> None:
    api.steps, api.step_s = 1000, 0.05
    run = job.create(openai_spec(chat_file(tmp_path)), tmp_path / "runs")
    follower = remote.Follower(run, spec.load(run / runfolder.SPEC))
    thread = threading.Thread(target=follower.run_job)
    thread.start()
    try:
        wait_for(lambda: _events(run, ev.Metrics), 60, "the first metrics")
        acks = {}
        for cmd, args in (("pause", {}), ("set_lr", {"factor": 0.5}), ("stop", {})):
            cid = runfolder.send_command(run, cmd, **args)
            acks[cmd] = runfolder.wait_ack(run, cid, timeout=30)
    finally:
        thread.join(60)
    assert not acks["pause"]["ok"] and "billed by trained tokens" in acks["pause"]["message"]
    assert not acks["set_lr"]["ok"] and "learning_rate_multiplier" in acks["set_lr"]["message"]
    assert acks["stop"]["ok"] and "cancelling OpenAI job ftjob-00000001" in acks["stop"]["message"]
    assert next(iter(api.jobs.values())).status == "cancelled"
    assert _events(run, ev.Done)[-1].state == "stopped" and runfolder.read_status(run)["state"] == "stopped"


def test_stop_before_the_job_exists_creates_none(api: OpenAIServer, tmp_path: Path) -> None:
    run = job.create(openai_spec(chat_file(tmp_path)), tmp_path / "runs")
    runfolder.send_command(run, "stop")  # waiting in commands.jsonl when the job reads it (before creation)
    assert follow(run, commands_from=0) == 0
    assert api.created_jobs == 0 and api.uploads == 0
    status = runfolder.read_status(run)
    assert status["state"] == "stopped" and "nothing was billed" in status["message"]


def test_a_job_whose_creation_answer_was_lost_is_found_not_created_again(api: OpenAIServer, tmp_path: Path) -> None:
    """Killed between the service creating the job and the id reaching remote.json: the restart finds it by the
    run id in its metadata."""
    from engine.techniques.openai_api import client

    run = job.create(openai_spec(chat_file(tmp_path)), tmp_path / "runs")
    uploaded = client().files.create(file=chat_file(tmp_path, 12, "messages").open("rb"), purpose="fine-tune")
    client().fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=uploaded.id,
                                     metadata={"llm_wizard_run": run.name})
    (run / remote.REMOTE).write_text(json.dumps({"training_file": uploaded.id, "creating": True}))
    assert follow(run) == 0
    assert (api.created_jobs, api.uploads) == (1, 1)
    assert json.loads((run / remote.REMOTE).read_text())["job_id"] == "ftjob-00000001"
    assert json.loads((run / remote.REMOTE).read_text())["epochs"] == 3  # n_epochs "auto" as the service chose it
    assert [m.epoch for m in _events(run, ev.Metrics)][-1] == 3.0
    assert any(isinstance(e, ev.State) and "found OpenAI job ftjob-00000001 again" in e.message for e in ev.read(run))


def test_an_unexpected_answer_quoting_the_key_fails_the_run_without_the_key(api: OpenAIServer, tmp_path: Path,
                                                                           capfd: pytest.CaptureFixture) -> None:
    api.refuse_create = 402  # not an answer the technique knows: an internal error, with its traceback
    run = job.create(openai_spec(chat_file(tmp_path)), tmp_path / "runs")
    assert follow(run) == 1
    error = _events(run, ev.Error)[-1]
    assert error.kind == "internal" and "quota exceeded for key ***" in error.message and error.traceback
    assert api.created_jobs == 0 and "remote.json" in {p.name for p in run.iterdir()}
    assert api.canary not in capfd.readouterr().err  # type: ignore[attr-defined]  # the traceback (job.log)
    assert files_holding(run, api.canary) == []  # type: ignore[attr-defined]


def test_a_restart_after_the_uploads_uploads_nothing_again(api: OpenAIServer, tmp_path: Path) -> None:
    """Stopped after both uploads (the creation refused): the next start creates the job with the same files."""
    api.refuse_create = 402
    run = job.create(openai_spec(chat_file(tmp_path, 30)), tmp_path / "runs")
    assert follow(run) == 1 and (api.uploads, api.created_jobs) == (2, 0)
    api.refuse_create = None
    assert follow(run) == 0
    assert (api.uploads, api.created_jobs) == (2, 1)
    body = next(iter(api.jobs.values())).body
    assert (body["training_file"], body["validation_file"]) == ("file-0001", "file-0002")
