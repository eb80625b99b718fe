"""Faults on real detached jobs (RELIABILITY P6, P8, G4, C4, C8, S1, S6, S7): each test names its rows.

One run goes through three faults in turn, because each needs the checkpoints the one before left:
an exception at step 5 (failed status with a traceback summary and the last checkpoint), a resume
under RLIMIT_FSIZE (disk full: paused with "free space, then resume", the previous checkpoint intact,
the temporary folder removed), and a resume whose optimizer.pt is a pickle payload (refused, never
run: the checkpoint before it is resumed, saying why). A canary Hub token in every job's environment appears in no file of the run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.errors import UserError
from fault_helpers import (
    CANARY_ENV, assert_failed_by_injected_exception, assert_no_canary, assert_stopped_while_disk_full,
    half_the_size_of, wait_disk_full_pause,
)
from run_helpers import control, events, launch, make_corpus, tiny_spec, wait_exit, wait_for, wait_step

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

LIMITED_RESUME = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from engine.run.job import main
sys.exit(main([sys.argv[1], "--resume"]))
"""


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_manifest(folder: Path) -> None:
    """Make a tampered file pass the integrity check, so only the loader stands between it and the process."""
    manifest = json.loads((folder / ck.MANIFEST).read_text())
    for rel in manifest["files"]:
        data = (folder / rel).read_bytes()
        manifest["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ck.MANIFEST).write_text(json.dumps(manifest))


def test_P8_C4_S1_S6_S7_exception_disk_full_pickle_payload_and_canary(tmp_path: Path) -> None:
    env = CANARY_ENV
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 30}, checkpoint={"every": 2, "keep": 3})
    # P8: an exception fails the run with a traceback summary and names the last valid checkpoint; exit 1
    run, pid = launch(s, tmp_path / "runs", env={**env, "LLMW_FAULT": "raise@step:5"})
    assert wait_exit(pid) == 1
    assert_failed_by_injected_exception(run, 5, "step-000004")

    # C4: disk full while saving step 6 (files limited to half a checkpoint's weights file)
    limit = half_the_size_of(run, run / "checkpoints" / "step-000004" / "model.safetensors")
    with open(run / runfolder.LOG, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", LIMITED_RESUME, str(run), str(limit)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env})
    wait_disk_full_pause(run, "step-000004")
    assert proc.poll() is None  # paused, not dead
    assert control(run, "stop")["ok"]
    assert_stopped_while_disk_full(run, proc.wait(timeout=120))

    # S1: a pickle payload as optimizer.pt (integrity check passed) is refused and never runs
    marker = tmp_path / "PAYLOAD_RAN"
    (run / "checkpoints" / "step-000004" / "optimizer.pt").write_bytes(pickle.dumps({"state": _Evil(marker)}))
    _rewrite_manifest(run / "checkpoints" / "step-000004")
    pid = job.launch(run, resume=True, env=env)
    assert wait_exit(pid) == 0
    assert not marker.exists()
    # C14: a checkpoint whose file its loader refuses is passed over like a damaged one, saying why
    resumed = [e for e in events(run, "state") if e.get("resumed_from")][-1]
    assert resumed["resumed_from"] == "step-000002", resumed
    assert "step-000004 is not usable (cannot be loaded" in resumed["message"]
    assert "Weights only load failed" in resumed["message"]

    assert_no_canary(run)  # S6


def test_P6_G4_C3_C8_P7_O5_second_start_refused_second_signal_damaged_newest_then_sigkill(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 400}, checkpoint={"every": 2, "keep": 3})
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.2)
    wait_step(run, 5)
    # P6: refused by the launcher and by the job itself, naming the owner; the owner's status untouched
    with pytest.raises(UserError, match=f"already being trained by process {pid}"):
        job.launch(run, resume=True)
    second = subprocess.run([sys.executable, "-m", "engine.run.job", str(run), "--resume"], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert second.returncode == 2 and f"already being trained by process {pid}" in second.stderr
    assert runfolder.read_status(run)["pid"] == pid and runfolder.read_status(run)["state"] == "running"
    # G4: a second SIGTERM 50 ms after the first ends the job at once; what is on disk stays valid
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    sent = time.monotonic()
    code = wait_exit(pid, timeout=30)
    assert time.monotonic() - sent < 5
    # 130: the second signal cut the stop short; 11: the first one's save and stop were already done
    # (a tiny model on a quiet machine), and the late signal did not turn that into a kill
    assert code == job.EXIT_SECOND_SIGNAL or (code == 11 and runfolder.read_status(run)["state"] == "stopped"), code
    for c in ck.list_checkpoints(run, include_invalid=True):
        assert ck.verify(c.path) is None, c.name
    history = [c for c in ck.lineage(run) if ck.verify(c.path) is None]
    assert len(history) >= 2
    # C3: the newest checkpoint is damaged (same size, one byte flipped): the resume falls back and says so
    weights = history[0].path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    newest = history[1]
    # C8: leftovers of ours are removed at the next start, and nothing else
    (run / "checkpoints" / ".tmp-step-000099-12345").mkdir()
    (run / ".tmp-final").mkdir()
    (run / "checkpoints" / "notes.txt").write_text("the user's")
    pid = job.launch(run, resume=True, step_sleep=0.2)
    wait_for(lambda: runfolder.read_status(run).get("state") == "running" and runfolder.read_status(run).get("pid") == pid,
             what="resumed job running")
    assert not (run / "checkpoints" / ".tmp-step-000099-12345").exists() and not (run / ".tmp-final").exists()
    assert (run / "checkpoints" / "notes.txt").exists()
    resumed = [e for e in events(run, "state") if e.get("resumed_from")][-1]
    assert resumed["resumed_from"] == newest.name
    assert f"checkpoint {history[0].name} is not usable" in resumed["message"] and "damaged" in resumed["message"]
    # P7, O5: killed with SIGKILL (as the host's OOM killer does): never shown as running
    wait_step(run, newest.step + 2)
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid) == -signal.SIGKILL
    status = runfolder.read_status(run)
    assert status["state"] == "crashed" and "stopped unexpectedly" in status["message"]
    assert f"resumable from step {ck.lineage(run)[0].step}" in status["message"]
