"""The kill test (RELIABILITY G5, C1, R1 and the negative controls of 9.11): 25 SIGKILLs at random moments of
a run that checkpoints every other step. After every kill each step-* folder is whole and loadable, every
restart resumes from the newest valid checkpoint, and every loss ever logged for a step equals the loss
of an uninterrupted run at that step. Two controls prove the harness can fail: an in-place checkpoint
writer leaves a half-written step-* folder under the same kills, and a resume without the RNG state
(dropout on) logs different losses.

Speed: the jobs fork from one process that imported torch and transformers once (tests/support/kill_helpers.py,
shared with the LoRA and distillation kill tests of test_reliability_techniques). Each child is a real
process running `engine.run.job.run_job` and is killed with SIGKILL by this test.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine import spec
from engine.run import job
from engine.runfolder import folder as runfolder
from kill_helpers import Zygote, finish, kill_trials, logged_losses, reference
from run_helpers import make_corpus, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("kill")
    mp = pytest.MonkeyPatch()  # one token cache for the module: the warm-up fills it for every test
    mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
    mp.setenv("HF_HOME", str(tmp / "hf"))
    corpus = make_corpus(tmp)
    z = Zygote()
    z.warm(_spec(corpus), tmp / "runs")
    yield z, corpus
    z.close()
    mp.undo()


def _spec(corpus: Path, dropout: float = 0.0) -> spec.RunSpec:
    return tiny_spec(corpus, model={"dropout": dropout},
                     train={"max_steps": 2000, "schedule": "constant", "warmup_steps": 0},
                     checkpoint={"every": 2, "keep": 3}, log={"every": 1})


def test_G5_C1_R1_25_sigkills_every_restart_resumes_whole_and_the_curve_matches(zygote: tuple, tmp_path: Path) -> None:
    zygote, corpus = zygote
    s = _spec(corpus)
    run = job.create(s, tmp_path / "runs")
    seen = kill_trials(zygote, run, 25, "atomic", random.Random(1))
    assert seen["kills"] == 25 and seen["resumes_checked"] >= 10
    assert seen["tmp_left"] >= 3, seen  # kills did land inside saves, so the check had something to catch
    last = ck.find_resume(run)
    assert last is not None and last.step >= 10
    steps = last.step + 6
    print(f"kill test: {seen}; resumed to step {last.step}, finished at {steps}")  # shown with pytest -s
    finish(zygote, run, steps)
    assert not [p for p in (run / ck.CHECKPOINTS).glob(".tmp-*")]  # leftovers cleaned at start (C8)
    expected = reference(zygote, s, tmp_path / "runs", steps)
    logged = logged_losses(run)
    assert sorted(logged) == list(range(1, steps + 1))
    for step, values in logged.items():  # every value ever logged for a step, across all 26 processes
        assert values == {expected[step]}, (step, values, expected[step])


def test_control_inplace_writer_corrupts_under_the_same_kills(zygote: tuple, tmp_path: Path) -> None:
    zygote, corpus = zygote
    s = _spec(corpus)
    run = job.create(s, tmp_path / "runs")
    seen = kill_trials(zygote, run, 8, "inplace", random.Random(2), save_sleep=0.3)
    assert seen["broken"] >= 1, f"the in-place writer survived {seen['kills']} kills: the harness cannot fail"


def test_control_resume_without_rng_state_differs(zygote: tuple, tmp_path: Path) -> None:
    zygote, corpus = zygote
    s = _spec(corpus, dropout=0.1)
    run = job.create(s, tmp_path / "runs")
    kill_trials(zygote, run, 3, "norng", random.Random(3))
    last = ck.find_resume(run)
    assert last is not None, "no checkpoint after the kills: nothing was resumed"
    steps = last.step + 6
    finish(zygote, run, steps, mode="norng")
    expected = reference(zygote, s, tmp_path / "runs", steps)
    logged = logged_losses(run)
    assert any(values != {expected[step]} for step, values in logged.items())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_G2_G6_signal_during_a_save_lets_it_finish_then_saves_and_exits_11(zygote: tuple, tmp_path: Path, sig) -> None:
    zygote, corpus = zygote
    run = job.create(_spec(corpus), tmp_path / "runs")
    pid = zygote.start(run, resume=False, save_sleep=1.5)  # each save takes 1.5 s
    root = run / ck.CHECKPOINTS
    deadline = time.monotonic() + 120
    while not (root.is_dir() and list(root.glob(".tmp-step-000004-*"))):  # the second save is in progress
        assert time.monotonic() < deadline, "no save started"
        time.sleep(0.01)
    os.kill(pid, sig)
    assert zygote.wait(pid) == 11
    names = [c.name for c in ck.list_checkpoints(run)]
    assert names[:2] == ["step-000002", "step-000004"]  # the save the signal interrupted was completed
    assert all(ck.verify(root / n) is None for n in names) and not list(root.glob(".tmp-*"))
    stopped = [e for e in runfolder.read_events(run)[0] if e["type"] == "state" and e["state"] == "stopped"]
    assert stopped and sig.name in stopped[-1]["message"] and f"step {names[-1][5:].lstrip('0')}" in stopped[-1]["message"]


def test_C9_save_now_during_a_periodic_save_is_serialised_one_checkpoint_per_step(zygote: tuple, tmp_path: Path) -> None:
    zygote, corpus = zygote
    run = job.create(_spec(corpus), tmp_path / "runs")
    pid = zygote.start(run, resume=False, save_sleep=1.0)
    root = run / ck.CHECKPOINTS
    deadline = time.monotonic() + 120
    while not (root.is_dir() and list(root.glob(".tmp-step-000002-*"))):  # the first periodic save is running
        assert time.monotonic() < deadline, "no save started"
        time.sleep(0.01)
    _, offset = runfolder.read_events(run)
    ack = runfolder.wait_ack(run, runfolder.send_command(run, "save"), timeout=120, from_offset=offset)
    assert ack and ack["ok"] and ack["checkpoint"] == "step-000002"  # handled after the save, not beside it
    stop = runfolder.wait_ack(run, runfolder.send_command(run, "stop"), timeout=120, from_offset=offset)
    assert stop and stop["ok"]
    assert zygote.wait(pid) == 0
    saved = [e["name"] for e in runfolder.read_events(run)[0] if e["type"] == "checkpoint"]
    assert len(saved) == len(set(saved)) and saved[0] == "step-000002"  # one checkpoint per step
    assert all(ck.verify(root / n) is None for n in saved) and not list(root.glob(".tmp-*"))
