"""Notifications reach a local HTTP endpoint (127.0.0.1, started here) for a finished run, a guard's pause and a
failure: as a plain JSON webhook and through Apprise's json:// URL, with the run id, state, step, last loss and the
attach command; a URL that refuses at first is retried; one that never answers is one alert, the run unharmed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.run import job
from engine.run.trainer import Trainer
from engine.runfolder import folder as runfolder
from fault_helpers import run_in_process
from run_helpers import events, in_process_trainer, make_corpus, tiny_spec
from track_helpers import webhook_receiver

pytestmark = pytest.mark.slow
STREAK = "nan@try:5-7"  # three non-finite steps in a row: train.nonfinite_patience pauses the run


def _spec(tmp_path: Path, urls: list[str], **sections) -> object:
    return tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": 12}, log={"every": 2, "tensorboard": False},
                     checkpoint={"every": 4}, notify={"urls": urls}, **sections)


def test_done_guard_pause_and_failure_are_sent_to_a_local_webhook(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with webhook_receiver() as hook:
        urls = [hook.url("/hook"), hook.url("/apprise", scheme="json")]
        # done
        s = _spec(tmp_path, urls)
        run = job.create(s, tmp_path / "runs")
        with in_process_trainer():
            assert Trainer(run, s).run_job() == 0
        done = hook.bodies("/hook")
        assert [b["event"] for b in done] == ["done"]
        body = done[0]
        assert body["run"] == run.name and body["state"] == "done" and body["step"] == 12
        assert isinstance(body["loss"], float) and body["attach"] == f"llm-wizard attach {run.name}"
        assert f"llm-wizard attach {run.name}" in body["body"] and "finished" in body["body"]
        via_apprise = hook.bodies("/apprise")  # Apprise's JSON: {"version", "title", "message", "type", ...}
        assert len(via_apprise) == 1 and run.name in via_apprise[0]["title"]
        assert "finished" in via_apprise[0]["message"]

        # a guard's pause (run_in_process turns the pause into a stop, which is sent as well)
        hook.posts.clear()
        trainer, code, evs = run_in_process(_spec(tmp_path, [hook.url()]), tmp_path / "runs2", monkeypatch, STREAK)
        kinds = [b["event"] for b in hook.bodies()]
        assert kinds == ["paused", "stopped"]
        paused = hook.bodies()[0]
        assert "paused by a guard: nan" in paused["body"] and paused["state"] == "paused"
        assert paused["step"] == trainer.step and paused["run"] == trainer.run.name

        # a failure, with its error
        hook.posts.clear()
        trainer, code, evs = run_in_process(_spec(tmp_path, [hook.url()]), tmp_path / "runs3", monkeypatch,
                                            "raise@step:6")
        assert code == 1
        failed = hook.bodies()
        assert [b["event"] for b in failed] == ["failed"]
        assert failed[0]["state"] == "failed" and "injected fault at step 6" in failed[0]["body"]
        assert not [e for e in evs if e["type"] == "alert" and e["kind"] == "notify"]


def test_a_refusing_endpoint_is_retried_and_a_dead_one_is_one_alert(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.track import notify

    monkeypatch.setattr(notify, "BACKOFF_S", 0.05)
    with webhook_receiver() as hook:
        hook.fail_first = 2  # 503 twice, then taken
        dead = "http://127.0.0.1:9/never"  # the discard port: nothing listens
        s = _spec(tmp_path, [hook.url(), dead])
        run = job.create(s, tmp_path / "runs")
        with in_process_trainer():
            assert Trainer(run, s).run_job() == 0
        assert [b["event"] for b in hook.bodies()] == ["done"]
    alerts = [e for e in events(run, "alert") if e["kind"] == "notify"]
    assert len(alerts) == 1 and "http://127.0.0.1:9" in alerts[0]["message"] and "/never" not in alerts[0]["message"]
    assert runfolder.read_status(run)["state"] == "done"
