"""Two processes over gloo: both ranks take the same numerical decisions (RELIABILITY N4 on several ranks).

The spikes are injected on rank 0 only (LLMW_FAULT_RANK=0), as a bad batch is one rank's: DDP averages the
gradients, but each rank computes its own loss, so a per-rank skip flag would skip the step on rank 0 and
apply it on rank 1, and the replicas would part (then hang on mismatched collectives). The trainer averages
each step's loss over ranks on the device before the flags (`Ranks.step_loss` in engine/run/distributed/collectives.py). One launch:
a single skipped spike, a streak that rolls back automatically, a second streak that pauses (the automatic
rollbacks are used up), then stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from engine import processes
from engine.runfolder import folder as runfolder
from run_helpers import events, launch, make_corpus, tiny_spec, wait_exit, wait_for
from test_distributed_runs import PROBE, TWO, control, probe

pytestmark = pytest.mark.slow


def _alerts(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in events(run, "alert") if e.get("kind") == kind]


def test_two_process_spike_skip_auto_rollback_and_pause_agree_on_both_ranks(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path, lines=1500),
                  train={"max_steps": 60, "spike_patience": 2, "auto_rollback": True, "auto_rollback_max": 1},
                  checkpoint={"every": 4, "keep": 20}, distributed=TWO)
    # rank 0's attempts: 14 alone (skipped), 20-21 (a streak: auto-rollback), 26-27 (a streak: pause)
    fault = {"LLMW_FAULT": "spike@try:14:x50,spike@try:20-21:x50,spike@try:26-27:x50", "LLMW_FAULT_RANK": "0"}
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.02, env={**PROBE, **fault})
    try:
        state = wait_for(lambda: (st := runfolder.read_status(run).get("state")) in ("paused", "failed", "done")
                         and st, 240, "the pause")
        # ranks that skip different steps part and fail on mismatched collectives (seen with a per-rank loss)
        assert state == "paused", (events(run, "error"), (run / runfolder.LOG).read_text()[-3000:])
        control(run, "stop")
        assert wait_exit(pid, 180) == 0, (run / runfolder.LOG).read_text()[-3000:]
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    spikes = _alerts(run, "spike")
    skipped = [a for a in spikes if a["severity"] == "warning" and a.get("skipped")]
    assert skipped and skipped[0]["step"] == 14, spikes  # rank 0's x50 is ~25x the level over two ranks
    rolls = [a for a in _alerts(run, "rollback") if a.get("checkpoint")]
    assert len(rolls) == 1 and rolls[0]["checkpoint"] == "step-000016" and rolls[0]["multiplier"] == 0.5, rolls
    assert spikes[-1]["severity"] == "error" and "auto-rollback already tried 1 times" in spikes[-1]["message"]
    # both ranks went through the same steps, pauses, positions and LRs, and end with the same weights
    def trace(rank: int) -> list[tuple]:
        return [(r["step"], r["paused"], tuple(r["position"]), r["multiplier"], r["lr"])
                for r in probe(run, rank) if not r.get("end")]
    assert trace(0) == trace(1) and (16, False, tuple(rolls[0]["skipped_to"]), 0.5) in \
        [row[:4] for row in trace(1)], (trace(0), trace(1))
    assert [row[:2] for row in trace(1)][-1] == (20, True)  # rank 1 paused where rank 0 did
    ends = [[r for r in probe(run, rank) if r.get("end")][-1] for rank in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] == 20 and ends[0]["digest"] == ends[1]["digest"], ends
