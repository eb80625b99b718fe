"""Tracking's pure parts: what a notification says and when, the hub that never blocks and switches a failing
consumer off with one alert, the best checkpoint by eval loss in rotation, and the new spec settings."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from engine import spec
from engine.checkpoints import store as ck
from engine.errors import UserError
from engine.run.evaluation import BestEval
from engine.runfolder import events as ev
from engine.track import notify
from engine.track.hub import Hub
from engine.track.trackers import TrackerSink, scalars


class Log:
    """An EventLog stand-in: keeps what is emitted."""

    def __init__(self) -> None:
        self.emitted: list[ev.Event] = []

    def emit(self, event: ev.Event, flush: bool = True) -> ev.Event:
        self.emitted.append(event)
        return event


def _metrics(step: int, loss: float) -> ev.Metrics:
    return ev.Metrics.from_keys(step=step, epoch=0.1, tokens=100 * step, eta_s=1.0, branch=0, **{
        "train/loss": loss, "train/lr": 1e-3, "train/grad_norm": 1.0, "train/tok_per_s": 10.0,
        "train/step_ms": 5.0, "train/mfu": None, "train/loss_smooth": loss})


def _said(events: list[ev.Event], severity: str = "error") -> list[notify.Message]:
    n = notify.Notifier(Log(), "20260101-run-ab12", [], severity)
    return [m for e in events for m in n.message_for(e)]


def test_a_guard_pause_is_one_message_a_persons_pause_none() -> None:
    guard = [_metrics(10, 2.5), ev.Alert(step=11, kind="nan", severity="error", suggest="rollback",
                                         message="3 non-finite steps in a row"),
             ev.State(state="paused", step=11, message="paused")]
    said = _said(guard)
    assert [m.event for m in said] == ["paused"]
    m = said[0]
    assert "paused by a guard: nan: 3 non-finite steps in a row" in m.body
    assert (m.state, m.step, m.loss) == ("paused", 11, 2.5)
    assert m.attach == "llm-wizard attach 20260101-run-ab12" and m.attach in m.body
    assert _said([_metrics(10, 2.5), ev.State(state="paused", step=10, message="paused at step 10")]) == []


def test_done_failed_rollback_and_alerts_by_severity() -> None:
    assert [m.event for m in _said([ev.Error(message="boom", kind="internal"),
                                    ev.Done(state="failed", step=3)])] == ["failed"]
    assert "failed: boom" in _said([ev.Error(message="boom", kind="internal"), ev.Done(state="failed", step=3)])[0].body
    assert [m.event for m in _said([ev.Done(state="done", step=9)])] == ["done"]
    auto = ev.Alert(step=5, kind="rollback", severity="warning", checkpoint="step-000004", message="rolled back")
    assert [m.event for m in _said([auto])] == ["rollback"]
    plateau = ev.Alert(step=5, kind="plateau", severity="warning", message="flat")
    assert _said([plateau]) == [] and [m.event for m in _said([plateau], "warning")] == ["alert"]
    # an error alert not followed by a pause is sent on its own, with the next event
    error = ev.Alert(step=5, kind="low_disk", severity="error", message="disk")
    assert [m.event for m in _said([error, _metrics(6, 1.0)])] == ["alert"]
    # the messengers' own trouble is never sent through them
    assert _said([ev.Alert(kind="notify", severity="error", message="x"), _metrics(1, 1.0)], "info") == []


def test_urls_are_shown_without_secrets_and_dollar_names_come_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert notify.shown("slack://TokenA/TokenB/TokenC") == "slack://…"
    assert notify.shown("https://hooks.example.com/services/T0/B0/secret") == "https://hooks.example.com"
    assert notify.shown("json://user:pw@10.0.0.1:8080/x") == "json://10.0.0.1:8080"
    monkeypatch.setenv("LLMW_HOOK", "http://127.0.0.1:1/x")
    assert notify.resolve("$LLMW_HOOK") == "http://127.0.0.1:1/x"
    monkeypatch.delenv("LLMW_HOOK")
    with pytest.raises(UserError, match=r"\$LLMW_HOOK is not set"):
        notify.resolve("$LLMW_HOOK")
    # a missing variable is not retried: one error, at once
    started = time.monotonic()
    out = notify.send(["$LLMW_HOOK"], notify.Message("test", "t", "b", "r", "s", 0, None, "a"), backoff_s=5)
    assert "not set" in out["$LLMW_HOOK"] and time.monotonic() - started < 1


class _Slow:
    name = "slow"

    def __init__(self) -> None:
        self.seen: list[ev.Event] = []
        self.release = threading.Event()

    def on_event(self, event: ev.Event) -> None:
        self.release.wait(5)
        self.seen.append(event)

    def close(self) -> None:
        pass


class _Broken(_Slow):
    name = "broken"

    def on_event(self, event: ev.Event) -> None:
        raise ConnectionError("no route")


def test_the_hub_never_blocks_and_switches_a_failing_sink_off_with_one_alert(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.track import hub as hub_mod

    monkeypatch.setattr(hub_mod, "QUEUE", 8)
    log, slow, broken = Log(), _Slow(), _Broken()
    hub = Hub(log, [slow, broken], close_s=5)
    started = time.perf_counter()
    for i in range(50):  # far more than the queue holds, while the slow sink waits
        hub.on_event(_metrics(i + 1, 1.0))
    assert time.perf_counter() - started < 0.5
    assert hub.dropped > 0
    slow.release.set()
    hub.close()
    tracker_alerts = [e for e in log.emitted if isinstance(e, ev.Alert) and e.kind == "tracker"]
    assert sum("broken failed (ConnectionError: no route)" in a.message for a in tracker_alerts) == 1
    assert any("fell behind" in a.message for a in tracker_alerts)
    assert broken not in hub.sinks and slow.seen


def test_a_slow_sink_never_holds_back_another() -> None:
    class Fast(_Slow):
        name = "fast"

        def on_event(self, event: ev.Event) -> None:
            self.seen.append(event)

    slow, fast = _Slow(), Fast()
    hub = Hub(Log(), [slow, fast], close_s=5)
    for i in range(20):
        hub.on_event(_metrics(i + 1, 1.0))
    deadline = time.monotonic() + 5
    while len(fast.seen) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fast.seen) == 20 and slow.seen == []  # the slow one (a webhook timing out) still waits
    slow.release.set()
    hub.close()
    assert len(slow.seen) == 20


def test_tracker_sink_maps_events_to_scalars_and_text_and_follows_branches() -> None:
    calls: list[tuple] = []

    class Rec:
        def log_dict(self, values, step, branch=0):
            calls.append(("scalars", step, branch, values))

        def log_text(self, tag, text, step):
            calls.append(("text", step, tag, text))

        def close(self):
            calls.append(("close",))

    sink = TrackerSink("rec", Rec)
    sink.on_event(_metrics(4, 2.0))
    sink.on_event(ev.State(state="running", step=4, message="rolled back", branch=1))
    sink.on_event(ev.Eval(step=6, eval_loss=1.5, eval_ppl=4.48, samples=[{"prompt": "a", "text": "b"}]))
    sink.close()
    assert calls[0][:3] == ("scalars", 4, 0) and calls[0][3]["train/loss"] == 2.0 and "train/mfu" not in calls[0][3]
    assert calls[1] == ("text", 4, "run/state", "running: rolled back")
    assert calls[2][:3] == ("scalars", 6, 1) and calls[2][3] == {"eval/loss": 1.5, "eval/ppl": 4.48}
    assert calls[3] == ("text", 6, "eval/samples", "**a** → b") and calls[-1] == ("close",)
    assert scalars(ev.Done(state="done", step=1)) == {}


def _save(run: Path, step: int, eval_loss: float | None, loss: float = 1.0) -> None:
    metrics = {"loss": loss, **({"eval_loss": eval_loss} if eval_loss is not None else {})}
    ck.save(run, step, 0, lambda f: (f / "model.safetensors").write_bytes(b"w%d" % step), meta={"metrics": metrics})


def test_rotation_keeps_the_best_by_eval_loss_never_by_a_stale_one(tmp_path: Path) -> None:
    _save(tmp_path, 2, 3.0, loss=5.0)
    _save(tmp_path, 4, None, loss=0.5)  # no evaluation at this step: the lowest train loss, but no eval loss
    _save(tmp_path, 6, 2.0, loss=4.0)  # the best eval loss
    _save(tmp_path, 8, 2.5, loss=3.0)
    assert ck.best(tmp_path).name == "step-000006"
    assert ck.rotate(tmp_path, 2, 0) == ["step-000002", "step-000004"]
    _save(tmp_path, 10, 2.6, loss=2.0)
    assert ck.rotate(tmp_path, 2, 0) == []  # the oldest beyond keep is the best: kept as well
    assert [c.name for c in ck.list_checkpoints(tmp_path)] == ["step-000006", "step-000008", "step-000010"]
    _save(tmp_path, 12, 2.7, loss=1.0)
    assert ck.rotate(tmp_path, 2, 0) == ["step-000008"] and ck.best(tmp_path).name == "step-000006"
    # with no eval loss anywhere, the train loss picks the keeper as before
    other = tmp_path / "other"
    for step, loss in ((2, 1.0), (4, 3.0), (6, 2.0)):
        _save(other, step, None, loss)
    assert ck.best(other) is None and ck.rotate(other, 2, 0) == []  # the oldest is the lowest train loss


def test_best_eval_counts_patience_and_survives_its_state() -> None:
    b = BestEval()
    assert [b.see(s, loss) for s, loss in ((2, 3.0), (4, 2.0), (6, 2.5), (8, 2.0))] == [True, True, False, False]
    assert (b.loss, b.step, b.since) == (2.0, 4, 2) and b.exhausted(2) and not b.exhausted(3) and not b.exhausted(0)
    assert BestEval.from_state(b.state()) == b and BestEval.from_state(None) == BestEval()


def test_spec_settings_are_checked_and_stay_out_of_spec_toml_at_their_defaults() -> None:
    default = spec.to_toml(spec.RunSpec())
    for absent in ("\npatience =", "\nprompts =", "\nfinal =", "\ntrackers =", "\ntensorboard =", "[notify]"):
        assert absent not in default
    s = spec.from_dict({"eval": {"every": 5, "patience": 2, "prompts": ["hi"]}, "checkpoint": {"final": "best"},
                        "log": {"trackers": ["mlflow"]}, "notify": {"urls": ["ntfy://topic", "$HOOK"]}})
    again = spec.from_dict(__import__("tomllib").loads(spec.to_toml(s)))
    assert again == s and again.fingerprint() == spec.RunSpec().fingerprint()  # none of it shapes the model
    for bad, field in (({"eval": {"every": 0, "patience": 2}}, "eval.patience"),
                       ({"checkpoint": {"final": "best"}, "eval": {"every": 0}}, "checkpoint.final"),
                       ({"log": {"trackers": ["tensorboard"]}}, "log.trackers"),
                       ({"notify": {"urls": ["not a url"]}}, "notify.urls"),
                       ({"notify": {"severity": "loud"}}, "notify.severity"),
                       ({"eval": {"prompts": "one"}}, "eval.prompts")):
        with pytest.raises(UserError, match=field):
            spec.from_dict(bad)
