"""Checkpoints: atomic commit at every crash point, damaged/partial folders never trusted, branches never mixed
(RELIABILITY C1, C2, C3, C7, C11, G5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine.errors import UserError


def _files(payload: bytes):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "optimizer.pt").write_bytes(payload[::-1] * 2)
    return write


def _save(run: Path, step: int, branch: int = 0, loss: float | None = None) -> ck.CheckpointInfo:
    meta = {"metrics": {"loss": loss}} if loss is not None else None
    return ck.save(run, step, branch, _files(f"weights at {step} b{branch}".encode()), meta=meta)


def test_save_commits_a_verified_folder(tmp_path: Path) -> None:
    info = _save(tmp_path, 10)
    assert info.path == tmp_path / "checkpoints" / "step-000010"
    assert ck.verify(info.path) is None
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "meta.json"}
    assert [c.name for c in ck.list_checkpoints(tmp_path)] == ["step-000010"]
    with pytest.raises(FileExistsError):  # never writes into an existing checkpoint
        _save(tmp_path, 10)


CRASH_SCRIPT = """
import sys
from pathlib import Path
from engine.checkpoints import store as ck
run = Path(sys.argv[1])
ck.save(run, 10, 0, lambda d: (d / "model.safetensors").write_bytes(b"ten"))
ck.save(run, 20, 0, lambda d: (d / "model.safetensors").write_bytes(b"twenty"))
ck.save(run, 30, 0, lambda d: (d / "model.safetensors").write_bytes(b"thirty"))
ck.rotate(run, 2, 0)
"""


@pytest.mark.parametrize(("point", "newest"), [
    ("ckpt:after_files:3", "step-000020"),
    ("ckpt:before_manifest:3", "step-000020"),
    ("ckpt:after_manifest:3", "step-000020"),
    ("ckpt:after_rename:3", "step-000030"),  # renamed = committed; only the directory fsync was lost
    ("ckpt:rotation", "step-000030"),
])
def test_kill_at_each_crash_point_leaves_only_whole_checkpoints(tmp_path: Path, point: str, newest: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], env={**os.environ, "LLMW_CRASH_AT": point})
    assert proc.returncode == 137
    assert ck.find_resume(tmp_path).name == newest
    for c in ck.list_checkpoints(tmp_path, include_invalid=True):
        assert ck.verify(c.path) is None  # every step-* folder that exists is whole
    ck.clean_tmp(tmp_path)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert ck.find_resume(tmp_path).name == newest


def test_folder_without_manifest_and_tmp_folders_are_ignored(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    fake = tmp_path / "checkpoints" / "step-000020"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"half")
    (fake / "meta.json").write_text(json.dumps({"step": 20, "branch": 0}))
    (tmp_path / "checkpoints" / ".tmp-step-000030-99").mkdir()
    assert [c.name for c in ck.list_checkpoints(tmp_path)] == ["step-000010"]
    assert ck.find_resume(tmp_path).name == "step-000010"


def test_damaged_newest_falls_back_loudly(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    bad = _save(tmp_path, 20)
    f = bad.path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF  # same size, one bit flipped: only the hash sees it
    f.write_bytes(bytes(data))
    notes: list[str] = []
    assert ck.find_resume(tmp_path, log=notes.append).name == "step-000010"
    assert "step-000020" in notes[0] and "checksum" in notes[0]
    (bad.path / "optimizer.pt").write_bytes(b"x")  # truncated: even the cheap check sees it
    assert "step-000020" not in [c.name for c in ck.list_checkpoints(tmp_path)]


def test_rollback_branch_never_mixes_with_the_abandoned_one(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step)
    branch = ck.start_branch(tmp_path, "step-000010")
    assert branch == 1
    # Before any save on the new branch, a resume picks the rollback point, not step 30.
    assert ck.find_resume(tmp_path).name == "step-000010"
    info = _save(tmp_path, 20, branch)  # the same step as branch 0's step-000020: a new name
    assert info.name == "step-000020-b1"
    assert (tmp_path / "checkpoints" / "step-000020").is_dir()
    assert [c.name for c in ck.lineage(tmp_path)] == ["step-000020-b1", "step-000010"]
    assert ck.find_resume(tmp_path).name == "step-000020-b1"
    # A branch of a branch: its history goes back through both origins.
    ck.start_branch(tmp_path, "step-000020-b1")
    _save(tmp_path, 25, 2)
    assert [c.name for c in ck.lineage(tmp_path)] == ["step-000025-b2", "step-000020-b1", "step-000010"]


def test_rotation_keeps_the_last_k_the_best_and_branch_origins(tmp_path: Path) -> None:
    _save(tmp_path, 10, loss=1.0)  # the best
    for step, loss in ((20, 3.0), (30, 2.5), (40, 2.4), (50, 2.3)):
        _save(tmp_path, step, loss=loss)
    deleted = ck.rotate(tmp_path, 2, 0)
    assert deleted == ["step-000020", "step-000030"]
    assert [c.name for c in ck.list_checkpoints(tmp_path)] == ["step-000010", "step-000040", "step-000050"]
    ck.start_branch(tmp_path, "step-000040")
    for step in (50, 60, 70):
        _save(tmp_path, step, 1, loss=2.0 - step / 1000)
    ck.rotate(tmp_path, 2, 1)
    names = [c.name for c in ck.list_checkpoints(tmp_path)]
    assert "step-000040" in names and "step-000050" in names  # origin and the abandoned branch stay
    assert "step-000050-b1" not in names and "step-000070-b1" in names


def test_find_by_step_or_name(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    assert ck.find(tmp_path, 10).name == ck.find(tmp_path, "step-000010").name == "step-000010"
    with pytest.raises(UserError, match="steps: 10"):
        ck.find(tmp_path, 99)


FUZZ_SCRIPT = """
import os, sys
from pathlib import Path
from engine.checkpoints import store as ck
run = Path(sys.argv[1])
step = max([c.step for c in ck.list_checkpoints(run)] or [0])
blob = os.urandom(1 << 20)
while True:
    step += 1
    ck.save(run, step, 0, lambda d: [(d / f"part{i}.bin").write_bytes(blob) for i in range(3)])
    ck.rotate(run, 2, 0)
"""


def test_sigkill_at_random_times_never_leaves_a_trusted_half_checkpoint(tmp_path: Path) -> None:
    import random
    import signal
    import time

    rng = random.Random(0)
    mid_save = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", FUZZ_SCRIPT, str(tmp_path)])
        time.sleep(0.15 + rng.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for c in ck.list_checkpoints(tmp_path, include_invalid=True):
            assert ck.verify(c.path) is None, c.name
        mid_save += bool(ck.clean_tmp(tmp_path))
    assert mid_save >= 3  # the kills did land inside saves (or rotations), so the check had something to catch
    assert ck.find_resume(tmp_path) is not None
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
