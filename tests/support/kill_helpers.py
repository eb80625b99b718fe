"""Killing real training jobs fast (RELIABILITY G5, C1, R1, C4): a zygote process imports torch,
transformers and peft once, and every job forks from it, so a restart costs a fork and the model setup
instead of a Python start-up. Each child is a real process running `engine.run.job.run_job`; a test kills it
with SIGKILL, or limits its file sizes (RLIMIT_FSIZE), or injects a fault (LLMW_FAULT).

Modes of a child: "atomic" (the real writer), "inplace" (negative control: a writer that fills the
checkpoint's own folder), "norng" (a resume that leaves out the RNG state), "noopt" (a resume that
leaves out the optimizer state). A slow save (a sleep between the optimizer and the RNG file, in every
writer) widens the window a kill can land in.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.checkpoints import store as ck
from engine import spec
from engine.run import job
from engine.runfolder import folder as runfolder

ROOT = Path(__file__).resolve().parents[2]

ZYGOTE = r"""
import os, resource, signal, sys, time, json
from pathlib import Path
import torch, transformers, accelerate, safetensors.torch  # imported once (a warm run adds peft); jobs fork
from engine.checkpoints import store as checkpoint
from engine.run import job
from engine.run import trainer as trainer_mod
from engine.run import checkpointing as ckpt_mod

# Answers go through their own descriptor: what the libraries print (DeepSpeed's logger writes to stdout)
# must not land among them. Forked jobs point 1 and 2 at their job.log, as real detached jobs do.
answers = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

orig_save, orig_rng = checkpoint.save, ckpt_mod.rng_state
save_sleep = 0.05


def slow_rng_state():
    time.sleep(save_sleep)  # mid-save: optimizer.pt is written, rng.pt and trainer_state.json are not
    return orig_rng()


def inplace_save(run, step, branch, write_files, *, parent=None, meta=None, replace=False):
    # Negative control: what a naive trainer does, writing straight into the checkpoint's own folder.
    final = Path(run) / checkpoint.CHECKPOINTS / checkpoint.name_for(step, branch)
    final.mkdir(parents=True, exist_ok=True)
    write_files(final)
    (final / checkpoint.META).write_text(json.dumps({"step": step, "branch": branch, **(meta or {})}))
    files = {p.name: {"size": p.stat().st_size, "sha256": checkpoint._sha256(p)} for p in final.iterdir()}
    (final / checkpoint.MANIFEST).write_text(json.dumps({"files": files}))
    return checkpoint.CheckpointInfo(final.name, final, step, branch, parent)


def weights_without_optimizer(self, folder):
    self.technique.load(self.prep, folder)  # negative control: the optimizer's moments start afresh


for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "warm":
        # One short run in this process: the first preparation pays for lazy imports and builds the token
        # cache; every forked job after it prepares in a fraction of a second.
        from accelerate.state import AcceleratorState
        from engine import spec
        run = Path(cmd[1])
        code = trainer_mod.Trainer(run, spec.load(run / "spec.toml")).run_job()
        AcceleratorState._reset_state(reset_partial_state=True)  # each child builds its own
        print(code, file=answers, flush=True)
    elif cmd[0] == "run":
        run, resume, mode = Path(cmd[1]), cmd[2] == "1", cmd[3]
        save_sleep, fsize, fault = float(cmd[5]), int(cmd[6]), cmd[7]
        pid = os.fork()
        if pid == 0:
            fd = os.open(run / "job.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if fsize:  # a write past the limit fails with EFBIG instead of killing the process
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            if fault != "-":
                os.environ["LLMW_FAULT"] = fault
            ckpt_mod.rng_state = slow_rng_state
            if mode == "inplace":
                checkpoint.save = inplace_save
            if mode == "norng":
                ckpt_mod.set_rng_state = lambda state: None
            if mode == "noopt":
                trainer_mod.Trainer._load_weights = weights_without_optimizer
            os._exit(job.run_job(run, resume=resume, step_sleep=float(cmd[4])))
        print(pid, file=answers, flush=True)
    elif cmd[0] == "wait":
        _, status = os.waitpid(int(cmd[1]), 0)
        print(os.waitstatus_to_exitcode(status), file=answers, flush=True)
"""


class Zygote:
    """The fork server; `env` is added to the environment of every job it starts (e.g. a canary token)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"zygote died answering {line!r}"
        return answer

    def start(self, run: Path, resume: bool, mode: str = "atomic", step_sleep: float = 0.02,
              save_sleep: float = 0.05, fsize: int = 0, fault: str = "") -> int:
        """Fork a job for `run`; `fsize` limits its files (bytes, 0 = no limit), `fault` is its LLMW_FAULT."""
        assert " " not in fault
        return int(self._ask(f"run {run} {int(resume)} {mode} {step_sleep} {save_sleep} {fsize} {fault or '-'}"))

    def warm(self, s: spec.RunSpec, runs: Path) -> None:
        run = job.create(with_max_steps(s, 2), runs)
        assert int(self._ask(f"warm {run}")) == 0, (run / "job.log").read_text()[-2000:]

    def wait(self, pid: int) -> int:
        return int(self._ask(f"wait {pid}"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def with_max_steps(s: spec.RunSpec, steps: int) -> spec.RunSpec:
    return spec.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "max_steps": steps}})


def broken_folders(run: Path) -> list[str]:
    """step-* folders that a naive resume (newest folder, load every file) could not load."""
    from safetensors.torch import load_file
    import torch

    bad = []
    for folder in sorted((run / ck.CHECKPOINTS).glob("step-*")):
        try:
            weights = list(folder.glob("*.safetensors"))  # model.safetensors, or a LoRA's adapter_model
            assert weights, "no weights file"
            for path in weights:
                load_file(path)
            for name in ("optimizer.pt", "rng.pt"):
                torch.load(folder / name, weights_only=True)
            json.loads((folder / "trainer_state.json").read_text())
        except Exception:  # noqa: BLE001 - any failure to load is what the harness looks for
            bad.append(folder.name)
    return bad


def logged_losses(run: Path, offset: int = 0) -> dict[int, set[float]]:
    out: dict[int, set[float]] = {}
    for e in runfolder.read_events(run, offset)[0]:
        if e["type"] == "metrics":
            out.setdefault(e["step"], set()).add(e["train/loss"])
    return out


def set_max_steps(run: Path, steps: int) -> None:
    s = spec.load(run / runfolder.SPEC)
    s.train.max_steps = steps  # a resume may change it: a constant schedule does not depend on it
    (run / runfolder.SPEC).write_text(spec.to_toml(s))


def kill_trials(z: Zygote, run: Path, n: int, mode: str, rng: random.Random, save_sleep: float = 0.05) -> dict[str, int]:
    """Start (resuming) and SIGKILL the job n times; checks after each kill. Returns counters."""
    seen = {"kills": 0, "broken": 0, "resumes_checked": 0, "tmp_left": 0}
    while seen["kills"] < n:
        expected = ck.find_resume(run)
        offset = runfolder.read_events(run)[1]
        pid = z.start(run, resume=expected is not None, mode=mode, save_sleep=save_sleep)
        if rng.random() < 0.2:  # during preparation (loading, data), before any step
            time.sleep(rng.uniform(0.05, 0.5))
        else:  # while training: steps, saves and everything between them
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    (st := runfolder.read_status(run)).get("pid") == pid and st.get("state") == "running"):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = z.wait(pid)
        assert code == -signal.SIGKILL, f"the job ended by itself ({code}) before the kill: see {run}/job.log"
        seen["kills"] += 1
        broken = broken_folders(run)
        seen["broken"] += bool(broken)
        if mode != "inplace":
            assert broken == [], f"kill {seen['kills']} left half checkpoints {broken}"
            damaged = [c.name for c in ck.list_checkpoints(run, include_invalid=True) if ck.verify(c.path)]
            assert damaged == [], f"kill {seen['kills']} left checkpoints whose manifest fails: {damaged}"
        seen["tmp_left"] += any(p.name.startswith(".tmp-") for p in (run / ck.CHECKPOINTS).glob(".*"))
        resumed = [e for e in runfolder.read_events(run, offset)[0] if e.get("resumed_from")]
        if resumed and expected is not None:
            assert resumed[0]["resumed_from"] == expected.name
            seen["resumes_checked"] += 1
    return seen


def finish(z: Zygote, run: Path, steps: int, mode: str = "atomic") -> int:
    """Resume `run` (or start it, if it has no checkpoint) to `steps`; returns the events offset before."""
    set_max_steps(run, steps)
    offset = runfolder.read_events(run)[1]
    pid = z.start(run, resume=ck.find_resume(run) is not None, mode=mode)
    assert z.wait(pid) == 0, (run / "job.log").read_text()[-2000:]
    return offset


def reference(z: Zygote, s: spec.RunSpec, runs: Path, steps: int) -> dict[int, float]:
    """The losses of an uninterrupted run of `s` to `steps`."""
    ref = job.create(with_max_steps(s, steps), runs)
    pid = z.start(ref, resume=False)
    assert z.wait(pid) == 0, (ref / "job.log").read_text()[-2000:]
    return {k: v.pop() for k, v in logged_losses(ref).items()}
