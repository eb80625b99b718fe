"""Shared pieces of the run tests: a learnable corpus, a tiny spec, launching and watching a job.

Timeouts are generous (minutes): they only matter when something is broken, and a job's start-up
(torch, transformers, accelerate imports) takes many seconds on a loaded 2-core machine."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine import spec

from engine.run import job

from engine.runfolder import folder as runfolder

@contextmanager
def in_process_trainer() -> Iterator[None]:
    """Around Trainers run inside pytest's process: accelerate keeps one state per process (one precision)
    and a spec sets torch's thread count; start clean and put both back afterwards."""
    import torch
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)


WORDS = "the cat dog sat on a mat and ran to big red blue house tree with old new fast slow".split()


def make_corpus(folder: Path, lines: int = 3000) -> Path:
    """About 100 KB of short sentences from a small vocabulary: a byte-level model learns it in seconds."""
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + "." for _ in range(lines))
    path = folder / "corpus.txt"
    path.write_text(text + "\n")
    return path


def tiny_spec(corpus: Path, **sections: dict[str, Any]) -> spec.RunSpec:
    data: dict[str, Any] = {
        "name": "t", "data": {"path": str(corpus), "val_fraction": 0.05}, "tokenizer": {"kind": "byte"},
        "model": {"arch": "gpt2", "size": "tiny", "layers": 1, "width": 32, "heads": 2},
        "train": {"seq_len": 32, "batch_size": 4, "lr": 3e-3, "max_steps": 30, "warmup_steps": 2, "threads": 1},
        "eval": {"every": 0}, "checkpoint": {"every": 10, "keep": 5}, "log": {"every": 1},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return spec.from_dict(data)


def launch(s: spec.RunSpec, runs: Path, *, step_sleep: float = 0.0, env: dict[str, str] | None = None
           ) -> tuple[Path, int]:
    run = job.create(s, runs)
    return run, job.launch(run, step_sleep=step_sleep, env=env)


def resume(run: Path, *, step_sleep: float = 0.0, env: dict[str, str] | None = None) -> int:
    return job.launch(run, resume=True, step_sleep=step_sleep, env=env)


def wait_for(check: Callable[[], Any], timeout: float = 240.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_step(run: Path, step: int, timeout: float = 240.0) -> dict[str, Any]:
    return wait_for(lambda: (s := runfolder.read_status(run)).get("step", 0) >= step and s, timeout, f"step {step}")


def wait_exit(pid: int, timeout: float = 240.0) -> int:
    """The exit code of a job this test launched (it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"job {pid} still running after {timeout:g} s")


def events(run: Path, kind: str | None = None) -> list[dict[str, Any]]:
    evs, _ = runfolder.read_events(run)
    return [e for e in evs if kind is None or e["type"] == kind]


def control(run: Path, cmd: str, timeout: float = 240.0, **args: Any) -> dict[str, Any]:
    _, offset = runfolder.read_events(run)
    cid = runfolder.send_command(run, cmd, **args)
    ack = runfolder.wait_ack(run, cid, timeout=timeout, from_offset=offset)
    assert ack is not None, f"no ack for {cmd}"
    return ack


def losses_by_step(evs: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: e["train/loss"] for e in evs if e["type"] == "metrics"}


def assert_generate_reads(run: Path, name: str, final: dict[str, Any]) -> None:
    """`generate` loads checkpoint `name` (consolidating shards if it must) with exactly final/'s weights."""
    import torch

    from engine.serve.generate import load_for_inference

    sampled, _, source = load_for_inference(run, name)
    assert source == name
    assert all(torch.equal(v, final[k]) for k, v in sampled.state_dict().items() if k in final)


def copy_stopped_at(run: Path, dest: Path, later: str) -> Path:
    """A copy of a finished `run` as if it had stopped before checkpoint `later`: that one and final/ gone."""
    import shutil

    shutil.copytree(run, dest)
    shutil.rmtree(dest / "checkpoints" / later)
    shutil.rmtree(dest / "final")
    return dest



def stopped_in_process(s: spec.RunSpec, runs: Path, stop_at: int) -> Path:
    """A run trained in this process and stopped by a `stop` command written after step `stop_at` (read at
    the next step boundary, as a user's command would be); checked to have stopped there."""
    from engine.run.trainer import Trainer

    run = job.create(s, runs)
    t = Trainer(run, s)
    step = t._train_step

    def step_then_stop() -> bool:
        done = step()
        if t.step == stop_at:
            runfolder.send_command(run, "stop")
        return done

    t._train_step = step_then_stop
    assert t.run_job() == 0
    status = runfolder.read_status(run)
    assert (status["state"], status["step"]) == ("stopped", stop_at)
    return run
