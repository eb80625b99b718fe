"""Numerical faults inside a real Trainer (in process, tiny model): an infinite gradient with a finite loss
is caught through the gradient norm before the optimizer step (RELIABILITY N2), and a model holding NaN
is never checkpointed (C10): an interval save pauses with an alert, a final save fails the run. A resume
keeps a backed-off micro-batch (R6) and names libraries whose version changed since the save (R9)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.errors import UserError
from engine.run.trainer import Interval, Trainer
from run_helpers import in_process_trainer, make_corpus, tiny_spec


@pytest.fixture
def trainer(tmp_path: Path):
    import torch

    with in_process_trainer():
        s = tiny_spec(make_corpus(tmp_path, lines=400))
        t = Trainer(job.create(s, tmp_path / "runs"), s)
        t._prepare()
        t.interval = Interval(loss=torch.zeros(()))
        yield t
        t.events.close()


def _alerts(run: Path) -> list[dict]:
    return [e for e in runfolder.read_events(run)[0] if e["type"] == "alert"]


def test_N2_infinite_gradient_with_finite_loss_is_skipped_before_the_step(trainer: Trainer) -> None:
    import torch

    assert trainer._train_step() and trainer.step == 1  # one real step: the optimizer has moments
    before = [p.detach().clone() for p in trainer.params]
    moments = [v.clone() for st in trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    hook = trainer.params[3].register_hook(lambda g: torch.full_like(g, float("inf")))
    assert trainer._train_step()  # skipped on the device (engine/run/step_guard.py); read at the next log or save
    hook.remove()
    assert trainer._settle_guard() is False
    assert trainer.step == 1 and not trainer.paused  # one bad step is skipped and logged; N3 pauses on a streak
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.params))  # the step never reached the weights
    after = [v for st in trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    assert all(torch.equal(a, b) for a, b in zip(moments, after)) and all(bool(torch.isfinite(v).all()) for v in after)
    alert = _alerts(trainer.run)[-1]
    assert alert["kind"] == "nan" and "gradient norm" in alert["message"] and alert["suggest"] == "rollback"
    assert alert["severity"] == "warning" and alert["skipped"] == 1


def test_C10_nan_weights_are_never_checkpointed(trainer: Trainer) -> None:
    import torch

    assert trainer._train_step()
    with torch.no_grad():
        trainer.params[0][0, 0] = float("nan")
    assert trainer.save_checkpoint(reason="interval") is None
    assert trainer.paused and trainer.state == "paused"
    assert ck.list_checkpoints(trainer.run, include_invalid=True) == []
    assert not list((trainer.run / ck.CHECKPOINTS).glob(".tmp-*"))  # nothing was even started
    alert = _alerts(trainer.run)[-1]
    assert alert["kind"] == "nan" and "parameter 0" in alert["message"] and "not saved" in alert["message"]
    with pytest.raises(UserError, match="not saved at step 1"):  # a stop or end save fails the run instead
        trainer.save_checkpoint(reason="end")
    with torch.no_grad():
        trainer.params[0][0, 0] = 0.0
    info = trainer.save_checkpoint(reason="interval")  # finite again: saved
    assert info is not None and ck.verify(info.path) is None


def _resumed(trainer: Trainer) -> Trainer:
    t = Trainer(trainer.run, trainer.spec, resume=True)
    t._prepare()
    t._resume()
    return t


def test_R6_R9_resume_reuses_the_backed_off_micro_batch_and_warns_of_new_library_versions(trainer: Trainer) -> None:
    assert trainer._train_step()
    trainer.batch_size, trainer.grad_accum = 2, 2  # as after an out-of-memory back-off from 4 x 1
    info = trainer.save_checkpoint(reason="interval")
    meta = json.loads((info.path / "meta.json").read_text())
    assert set(meta["versions"]) >= {"torch", "transformers"}  # R9: versions recorded
    meta["versions"]["torch"] = "2.0.0"
    (info.path / "meta.json").write_text(json.dumps(meta))
    manifest = json.loads((info.path / ck.MANIFEST).read_text())  # keep the edited checkpoint whole
    data = (info.path / "meta.json").read_bytes()
    manifest["files"]["meta.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (info.path / ck.MANIFEST).write_text(json.dumps(manifest))
    resumed = _resumed(trainer)
    try:
        assert (resumed.batch_size, resumed.grad_accum) == (2, 2)  # R6: the same effective batch of 4
        event = [e for e in runfolder.read_events(trainer.run)[0] if e.get("resumed_from")][-1]
        assert event["resumed_from"] == info.name and "torch was 2.0.0 when step-000001 was saved" in event["message"]
    finally:
        resumed.events.close()
