"""No overhead between logging intervals: a real Trainer (in process, tiny model) reads nothing back from the
device on steps that do not log, even when a step's loss is NaN (the guard skips it on the device and is
read at the log), and command polling opens commands.jsonl only when it changed."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.run import job

from engine.runfolder import commands as commands_file
from engine.runfolder import folder as runfolder
from engine.run.trainer import Trainer
from run_helpers import in_process_trainer, make_corpus, tiny_spec

LOG_EVERY = 5
# What reads a tensor back to the host (a device sync on a GPU), at the Python level.
SYNCS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def fresh_accelerate():
    with in_process_trainer():
        yield


def _in_mask_check() -> bool:
    """transformers' own forward reads one boolean back per call (masking_utils.find_packed_sequence_indices,
    when there is neither an attention mask nor a cache: training); a bare loop over the model has it too."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(os.path.join("transformers", "masking_utils.py")):
            return True
        frame = frame.f_back
    return False


def _count_syncs(monkeypatch: pytest.MonkeyPatch, trainer: Trainer) -> Counter:
    """Syncs during the loop, by the trainer's step count when they happened (a step's own work runs at
    count k-1, its log at count k); the model library's own mask check is left out (see _in_mask_check)."""
    import torch

    counts: Counter = Counter()
    looping = [False]

    def wrap(name: str, original: Any) -> Any:
        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if looping[0] and not _in_mask_check():
                counts[trainer.step] += 1
            return original(self, *args, **kwargs)
        return counted

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: counts.update([trainer.step]))
    loop = trainer._loop

    def counted_loop() -> int:
        looping[0] = True
        try:
            return loop()
        finally:
            looping[0] = False

    monkeypatch.setattr(trainer, "_loop", counted_loop)
    return counts


def _trainer(tmp_path: Path, steps: int) -> Trainer:
    s = tiny_spec(make_corpus(tmp_path, lines=400), train={"max_steps": steps},
                  log={"every": LOG_EVERY}, checkpoint={"every": 0})
    return Trainer(job.create(s, tmp_path / "runs"), s)


def test_no_sync_on_steps_that_do_not_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerate) -> None:
    trainer = _trainer(tmp_path, 10)
    counts = _count_syncs(monkeypatch, trainer)
    assert trainer.run_job() == 0
    assert trainer.device_guard  # fused AdamW: the non-finite check stays on the device
    quiet = [k for k in range(10) if k % LOG_EVERY or k == 0]
    assert {k: counts[k] for k in quiet} == {k: 0 for k in quiet}
    assert counts[LOG_EVERY] > 0 and counts[2 * LOG_EVERY] > 0  # the hook sees the logging interval's reads
    metrics = [e for e in runfolder.read_events(trainer.run)[0] if e["type"] == "metrics"]
    assert [e["step"] for e in metrics] == [5, 10]
    assert metrics[-1]["train/mfu"] is None  # on the CPU: unknown, never made up
    assert metrics[-1]["train/tok_per_s"] > 0


def test_nan_step_is_skipped_on_the_device_and_reported_at_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  fresh_accelerate) -> None:
    """RELIABILITY N1 without a per-step sync: NaN at step 3 of a 5-step interval."""
    import torch

    monkeypatch.setenv("LLMW_FAULT", "nan@step:3")
    trainer = _trainer(tmp_path, 20)
    trainer.spec.train.nonfinite_patience = 1  # pause at the first bad step (RELIABILITY N3 with K = 1)
    counts = _count_syncs(monkeypatch, trainer)
    paused_at: list[int] = []

    def pause_then_stop(paused: bool) -> None:  # in process nobody would send resume: stop instead
        paused_at.append(trainer.step)
        trainer.request_stop("test")

    monkeypatch.setattr(trainer, "set_paused", pause_then_stop)
    assert trainer.run_job() == 11  # stopped (not by a stop command): state saved
    # steps 1-5 ran at counts 0-4 and read nothing back, the NaN step 3 included; the log at count 5 took
    # the skipped step off, so its metrics were read at count 4
    assert all(counts[k] == 0 for k in range(LOG_EVERY - 1)) and counts[LOG_EVERY] > 0
    evs = runfolder.read_events(trainer.run)[0]
    alert = [e for e in evs if e["type"] == "alert" and e["kind"] == "nan"]
    assert len(alert) == 1 and alert[0]["step"] == 3 and alert[0]["skipped"] == 1 and "the loss" in alert[0]["message"]
    assert paused_at == [4]  # 5 steps tried, one skipped
    metrics = [e for e in evs if e["type"] == "metrics"]
    assert [e["step"] for e in metrics] == [4] and math.isfinite(metrics[0]["train/loss"])  # the 4 good steps
    ckpt = [e for e in evs if e["type"] == "checkpoint"][-1]
    assert ckpt["step"] == 4
    opt = torch.load(Path(ckpt["path"]) / "optimizer.pt", weights_only=True)["state"]
    assert all(float(s["step"]) == 4 for s in opt.values())  # the fused kernel did not count the skipped step
    assert all(bool(torch.isfinite(v).all()) for s in opt.values() for v in s.values() if torch.is_tensor(v))
    from safetensors.torch import load_file

    weights = load_file(str(Path(ckpt["path"]) / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_command_polling_reads_the_file_only_when_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    opens: list[int] = []  # reads of new bytes (the file itself stays open: see CommandReader)
    real_pread = commands_file._pread

    def counting_open(fd: int, n: int, offset: int) -> bytes:
        opens.append(offset)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(commands_file, "_pread", counting_open)
    reader = runfolder.CommandReader(run, 0)
    assert all(reader.poll() == [] for _ in range(50)) and opens == []  # no file yet
    cid = runfolder.send_command(run, "save")
    assert [c["id"] for c in reader.poll()] == [cid] and len(opens) == 1
    assert all(reader.poll() == [] for _ in range(200)) and len(opens) == 1  # unchanged: one stat() each
    second = runfolder.send_command(run, "pause")
    assert [c["id"] for c in reader.poll()] == [second] and len(opens) == 2
    os.utime(run / runfolder.COMMANDS_FILE)  # touched, no new bytes: may stat, must not return anything
    assert reader.poll() == [] and reader.poll() == []


def test_command_file_is_not_read_during_training_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fresh_accelerate) -> None:
    """A real run with a command waiting in the file: it is read once, then 10 steps poll it without opening."""
    trainer = _trainer(tmp_path, 10)
    runfolder.send_command(trainer.run, "set_lr", factor=1.0)
    trainer.commands = runfolder.CommandReader(trainer.run, 0)
    opens: list[int] = []  # reads of new bytes (the file itself stays open: see CommandReader)
    real_pread = commands_file._pread

    def counting_open(fd: int, n: int, offset: int) -> bytes:
        opens.append(trainer.step)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(commands_file, "_pread", counting_open)
    assert trainer.run_job() == 0
    assert opens == [0]  # read once before the first step, never again
    acks = [e for e in runfolder.read_events(trainer.run)[0] if e["type"] == "control_ack"]
    assert len(acks) == 1 and acks[0]["ok"]
