"""Exact resume, in process, with its negative controls (RELIABILITY R1, L1, R3): a run stopped at step
10 and resumed to 20 matches a straight 20-step run bit for bit, with dropout on; leaving out the
optimizer state, the data position or the RNG state on resume each makes it differ, so the check can
fail. A pause changes nothing; a resume with a changed model is refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from engine import spec

from engine.run import job

from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.run.trainer import Trainer
from run_helpers import control, in_process_trainer, losses_by_step, make_corpus, tiny_spec, wait_step

pytestmark = pytest.mark.slow


def _losses(run: Path) -> dict[int, float]:
    evs, _ = runfolder.read_events(run)
    return losses_by_step(evs)


def _interrupted(s: spec.RunSpec, runs: Path) -> dict[int, float]:
    """Train 10 steps (checkpoint at 10), then resume in a new Trainer up to 20; the losses after 10."""
    short = spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": 10}})
    run = job.create(short, runs)
    assert Trainer(run, short).run_job() == 0
    (run / runfolder.SPEC).write_text(spec.to_toml(s))  # max_steps may change on resume; the fingerprint allows it
    before = runfolder.read_events(run)[1]
    assert Trainer(run, s, resume=True).run_job() == 0
    evs, _ = runfolder.read_events(run, before)
    return losses_by_step(evs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("exact")
    # module scope runs before conftest's per-test folders: isolate it here too
    with in_process_trainer(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
        mp.setenv("HF_HOME", str(tmp / "hf"))
        s = tiny_spec(make_corpus(tmp), model={"dropout": 0.1}, train={"max_steps": 20, "schedule": "constant"},
                      checkpoint={"every": 10, "keep": 2})
        run = job.create(s, tmp / "runs")
        assert Trainer(run, s).run_job() == 0
        yield s, _losses(run), tmp / "runs"


def test_resume_is_bit_identical_with_dropout(setup: tuple) -> None:
    s, straight, runs = setup
    after = _interrupted(s, runs)
    assert sorted(after) == list(range(11, 21))
    assert all(after[k] == straight[k] for k in after), {k: (after[k], straight[k]) for k in after}


def _drop_optimizer(t: Trainer) -> None:
    t.optimizer.state.clear()


def _drop_data_position(t: Trainer) -> None:
    t.epoch, t.position = 0, 0


def _drop_rng(t: Trainer) -> None:
    import torch

    torch.manual_seed(1234)


@pytest.mark.parametrize("drop", [_drop_optimizer, _drop_data_position, _drop_rng], ids=["optimizer", "data", "rng"])
def test_leaving_out_part_of_the_state_is_detected(setup: tuple, monkeypatch: pytest.MonkeyPatch, drop) -> None:
    s, straight, runs = setup
    load = Trainer._load

    def partial_load(self: Trainer, info) -> None:
        load(self, info)
        drop(self)

    monkeypatch.setattr(Trainer, "_load", partial_load)
    after = _interrupted(s, runs)
    assert any(after[k] != straight[k] for k in after)


def test_pause_and_resume_leave_the_losses_unchanged(setup: tuple) -> None:
    s, straight, runs = setup
    run = job.create(s, runs)
    acks: list[dict] = []

    def steer() -> None:
        wait_step(run, 5)
        acks.append(control(run, "pause"))
        status = runfolder.read_status(run)
        time.sleep(0.3)
        acks.append({**control(run, "resume"), "status_step": status["step"]})

    thread = threading.Thread(target=steer)
    thread.start()
    assert Trainer(run, s, step_sleep=0.05).run_job() == 0
    thread.join()
    assert [a["cmd"] for a in acks] == ["pause", "resume"] and acks[0]["step"] == acks[1]["step"] == acks[1]["status_step"]
    assert _losses(run) == straight


def test_resume_refuses_a_changed_model_or_data_setup(setup: tuple) -> None:
    s, _, runs = setup
    run = job.create(s, runs)
    assert Trainer(run, spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": 10}})).run_job() == 0
    changed = spec.from_dict({**s.to_dict(), "model": {**s.to_dict()["model"], "width": 64}})
    assert Trainer(run, changed, resume=True).run_job() == 2
    errors = [e for e in runfolder.read_events(run)[0] if e["type"] == "error"]
    assert "different model or data setup" in errors[-1]["message"] and errors[-1]["kind"] == "user"


def test_a_save_after_set_lr_at_an_interval_step_keeps_the_new_lr(setup: tuple) -> None:
    """L2: the interval checkpoint of step N is written before the boundary's commands; a set_lr then a
    save at that boundary must not be answered with the older checkpoint (a resume would lose the LR)."""
    import json
    from types import SimpleNamespace

    from engine.checkpoints import store as checkpoint

    from engine.run import controls

    s, _, runs = setup
    short = spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": 10}})
    run = job.create(short, runs)
    t = Trainer(run, short)
    assert t.run_job() == 0  # step 10 was saved at the interval, before any command
    emitted: list[ev.Event] = []
    t.events = SimpleNamespace(emit=lambda event, flush=True: emitted.append(event))  # the job closed its writer
    folder = run / checkpoint.CHECKPOINTS / checkpoint.name_for(10, 0)
    before = json.loads((folder / "trainer_state.json").read_text())["schedule"]["multiplier"]
    assert controls.handle(t, {"cmd": "set_lr", "factor": 0.5})["ok"]
    info = t.save_checkpoint(reason="requested")
    after = json.loads((info.path / "trainer_state.json").read_text())["schedule"]["multiplier"]
    assert (before, after) == (1.0, 0.5) and info.path == folder
    assert [e for e in emitted if isinstance(e, ev.Checkpoint) and e.step == 10], emitted
    assert checkpoint.verify(folder) is None  # replaced whole, manifest and all
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
    # nothing changed since: the same checkpoint is answered, not written again
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    assert t.save_checkpoint(reason="requested").path == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime
