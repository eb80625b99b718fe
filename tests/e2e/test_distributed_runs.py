"""Two processes over gloo on the CPU, started by `accelerate launch` (issue 7): every control acts on both
ranks at the same step boundary, parameters stay identical, a killed rank ends the run with an error
naming it, and a resume continues exactly. Three two-process launches in all (about a minute each on a
loaded 2-core machine): the controls, SIGKILL and the resume share one scratch run; LoRA has its own."""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from engine.checkpoints import store as checkpoint

from engine import processes
from engine.runfolder import folder as runfolder
from finetune_helpers import base_model, corpus_and_tokenizer, finetune_spec
from run_helpers import events, launch, make_corpus, resume, tiny_spec, wait_exit, wait_for, wait_step

pytestmark = pytest.mark.slow
PROBE = {"LLM_WIZARD_RANK_PROBE": "1"}  # each rank writes <run>/ranks/rank-<r>.jsonl (engine/run/distributed/trainer.py)
TWO = {"num_processes": 2}


def probe(run: Path, rank: int) -> list[dict[str, Any]]:
    path = run / "ranks" / f"rank-{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def command_rows(run: Path, cmd: str) -> list[dict[str, Any]]:
    """Each rank's probe row for the last `cmd` it handled, once both ranks have handled it."""
    def both() -> list[dict[str, Any]] | None:
        rows = [[r for r in probe(run, rank) if r.get("cmd") == cmd] for rank in (0, 1)]
        return [r[-1] for r in rows] if all(rows) else None
    return wait_for(both, 120, f"both ranks handling {cmd}")


def control(run: Path, cmd: str, **args: Any) -> dict[str, Any]:
    cid = runfolder.send_command(run, cmd, **args)
    ack = runfolder.wait_ack(run, cid, timeout=120)
    assert ack and ack["ok"], ack
    return ack


def test_two_process_scratch_controls_kill_and_exact_resume(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 400}, checkpoint={"every": 5, "keep": 20},
                  distributed=TWO)
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.2, env=PROBE)
    try:
        wait_step(run, 6)
        starting = [e for e in events(run, "state") if e.get("world_size")]
        assert starting and starting[0]["world_size"] == 2 and starting[0]["backend"] == "gloo", starting

        # pause: both ranks stop at the same step and take no step while paused
        control(run, "pause")
        paused = command_rows(run, "pause")
        assert paused[0]["step"] == paused[1]["step"] and all(r["paused"] for r in paused), paused
        time.sleep(1.5)
        assert max(r["step"] for rank in (0, 1) for r in probe(run, rank)) == paused[0]["step"]
        assert paused[0]["digest"] == paused[1]["digest"]

        # set_lr while paused: the same multiplier and LR on both
        control(run, "set_lr", factor=0.5)
        lr = command_rows(run, "set_lr")
        assert lr[0]["multiplier"] == lr[1]["multiplier"] == 0.5 and lr[0]["lr"] == lr[1]["lr"], lr

        # rollback: both ranks back at step 5 with the same weights and data position
        ack = control(run, "rollback", step=5)
        back = command_rows(run, "rollback")
        assert back[0]["step"] == back[1]["step"] == 5 and back[0]["digest"] == back[1]["digest"], back
        assert back[0]["position"] == back[1]["position"] and ack["branch"] == 1
        control(run, "resume")
        wait_step(run, 7)

        # rescue: both roll back to the same checkpoint with the LR lowered x0.1
        ack = control(run, "rescue", back=0, factor=0.1, steps=100)
        res = command_rows(run, "rescue")
        assert res[0]["step"] == res[1]["step"] == int(ack["checkpoint"][5:11]), (res, ack)
        assert res[0]["digest"] == res[1]["digest"] and res[0]["multiplier"] == res[1]["multiplier"]
        assert res[0]["multiplier"] == pytest.approx(0.1)  # the checkpoint's multiplier (1) x 0.1

        # SIGKILL of rank 1 three steps after a checkpoint (two before the next one): the run ends with an error naming rank 1
        def later_checkpoint() -> dict[str, Any] | None:
            cps = [e for e in events(run, "checkpoint") if e["branch"] == 2 and e["step"] >= res[0]["step"] + 3]
            return cps[0] if cps else None
        last = wait_for(later_checkpoint, 120, "a checkpoint after the rescue")
        wait_step(run, last["step"] + 3)
        rank1 = probe(run, 1)[-1]["pid"]
        os.kill(rank1, signal.SIGKILL)
        assert wait_exit(pid, 180) != 0
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    errors = [e for e in events(run, "error") if e.get("kind") == "rank"]
    assert errors and errors[0]["rank"] == 1 and "rank 1" in errors[0]["message"] \
        and "SIGKILL" in errors[0]["message"], events(run, "error")
    assert events(run)[-1]["type"] == "done" and events(run)[-1]["state"] == "failed"
    assert runfolder.read_status(run)["state"] == "failed"
    newest = checkpoint.find_resume(run)
    assert newest is not None and checkpoint.verify(newest.path) is None and newest.branch == 2
    killed_at = max(e["step"] for e in events(run, "metrics"))
    before = {(e["branch"], e["step"]): e for e in events(run, "metrics")}

    # --resume: the two-process run continues from the last complete checkpoint, exactly
    _, offset = runfolder.read_events(run)
    pid = resume(run, step_sleep=0.2, env=PROBE)
    try:
        wait_step(run, killed_at + 2)
        os.kill(pid, signal.SIGHUP)  # the supervisor is the run's pid; a hang-up does not reach the ranks
        wait_step(run, killed_at + 4)
        control(run, "stop")
        assert wait_exit(pid, 180) == 0
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    after = [e for e, _ in runfolder.read_events_with_offsets(run, offset) if e["type"] == "metrics"]
    assert after[0]["step"] == newest.step + 1
    overlap = [(before[(e["branch"], e["step"])], e) for e in after if (e["branch"], e["step"]) in before]
    assert len(overlap) >= 2, (newest.step, killed_at)
    for old, new in overlap:  # same weights, data, LR and rescue state: the same numbers to the last bit
        assert (old["train/loss"], old["train/grad_norm"], old["train/lr"]) == \
            (new["train/loss"], new["train/grad_norm"], new["train/lr"]), (old, new)
    # stop ends both ranks at the same step with identical parameters; rank 0 alone wrote the run's files
    ends = [[r for r in probe(run, rank) if r.get("end")][-1] for rank in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] == runfolder.read_status(run)["step"]
    assert ends[0]["digest"] == ends[1]["digest"] and ends[0]["code"] == ends[1]["code"] == 0
    assert events(run)[-1]["type"] == "done" and events(run)[-1]["state"] == "stopped"
    losses = [e["train/loss"] for e in events(run, "metrics")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses  # the loss falls


def test_two_process_lora(tmp_path: Path) -> None:
    corpus, tokenizer = corpus_and_tokenizer(tmp_path)
    model = base_model("llama", tokenizer, tmp_path / "base")
    s = finetune_spec("lora", model, corpus, train={"max_steps": 16, "lr": 3e-3}, checkpoint={"every": 8},
                      distributed=TWO, options={"lora_rank": 4})
    run, pid = launch(s, tmp_path / "runs", env=PROBE)
    assert wait_exit(pid, 240) == 0, (run / runfolder.LOG).read_text()[-3000:]
    starting = [e for e in events(run, "state") if e.get("world_size")]
    assert starting[0]["world_size"] == 2 and starting[0]["tokens_per_step"] == 2 * 32 * 8
    ends = [[r for r in probe(run, rank) if r.get("end")][-1] for rank in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] == 16 and ends[0]["digest"] == ends[1]["digest"], ends
    metrics = events(run, "metrics")
    assert metrics[-1]["tokens"] == 16 * 2 * 32 * 8  # tokens summed over both ranks
    for m in metrics:  # tokens/s too: per step, both ranks' tokens (rank 0's clock; DDP keeps them in step)
        assert m["train/tok_per_s"] * m["train/step_ms"] / 1000 == pytest.approx(2 * 32 * 8, rel=1e-6), m
        assert m["train/mfu"] is None  # no peak on the CPU; on GPUs the peak is world x one GPU's
    losses = [e["train/loss"] for e in metrics]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    final = run / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    done = events(run, "done")
    assert len(done) == 1 and done[0]["state"] == "done"
    assert not list(run.glob("checkpoints/*/rank*"))  # no per-rank files: DDP checkpoints are rank 0's copy


def test_two_process_disk_full_ends_the_run_without_hanging(tmp_path: Path) -> None:
    # RLIMIT_FSIZE (inherited by every process) makes the optimizer file of the first checkpoint too big
    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 50}, checkpoint={"every": 4},
                  distributed=TWO)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, hard))
    try:
        run, pid = launch(s, tmp_path / "runs")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert wait_exit(pid, 240) != 0
    alerts = [e for e in events(run, "alert") if e.get("kind") == "disk_full"]
    assert alerts and alerts[0]["step"] == 4, events(run, "alert")
    errors = events(run, "error")
    assert errors and "several processes the run ends" in errors[0]["message"], errors
    assert events(run)[-1]["type"] == "done" and events(run)[-1]["state"] == "failed"
    assert checkpoint.list_checkpoints(run, include_invalid=True) == []  # nothing half-written left


def test_print_launch_commands_run_two_machines_on_localhost(tmp_path: Path) -> None:
    # two "machines" of one process each on this host: the printed lines, run as they are, train together
    import subprocess
    import sys

    from engine import spec

    from engine.run.distributed import launch as launch_config

    port = launch_config.free_port()
    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 4}, checkpoint={"every": 0},
                  distributed={"num_processes": 2, "num_machines": 2, "main_process_ip": "127.0.0.1",
                               "main_process_port": port})
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec.to_toml(s))
    runs = tmp_path / "runs"
    plan = subprocess.run([sys.executable, "-m", "tui.cli", "--runs-dir", str(runs), "train", str(spec_file),
                           "--print-launch"], capture_output=True, text=True, timeout=120, check=True).stdout
    (run,) = runs.iterdir()
    for line in reversed([x for x in plan.splitlines() if x.startswith("setsid nohup")]):
        subprocess.run(["bash", "-c", line], check=True, timeout=30)
    status = wait_for(lambda: (st := runfolder.read_status(run)).get("state") in ("done", "failed") and st, 240,
                      "the two-machine run to end")
    assert status["state"] == "done" and status["step"] == 4, (run / "job.log").read_text()[-2000:]
    starting = [e for e in events(run, "state") if e.get("world_size")]
    assert starting[0]["world_size"] == 2 and starting[0]["num_machines"] == 2
    assert (run / "final" / "model.safetensors").is_file() and (run / "job-machine1.log").is_file()


def test_two_process_save_command_between_logs_settles_skipped_steps_on_both_ranks(tmp_path: Path) -> None:
    """A non-finite step between two logs is read back at the next log, checkpoint or save: a `save` command
    there must settle it on every rank together (settling inside rank 0's save alone hung on a collective)."""
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 400}, log={"every": 200}, checkpoint={"every": 0},
                  distributed=TWO)
    run, pid = launch(s, tmp_path / "runs", step_sleep=0.1, env={**PROBE, "LLMW_FAULT": "nan@step:3"})
    try:
        wait_step(run, 6)
        cid = runfolder.send_command(run, "save")
        ack = runfolder.wait_ack(run, cid, timeout=90)
        assert ack and ack["ok"], (ack, (run / runfolder.LOG).read_text()[-3000:])
        control(run, "stop")
        assert wait_exit(pid, 120) == 0
    finally:
        if processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    skipped = [e for e in events(run, "alert") if e.get("kind") == "nan"]
    assert skipped and skipped[0]["step"] == 3, events(run, "alert")
    ends = [[r for r in probe(run, rank) if r.get("end")][-1] for rank in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] and ends[0]["digest"] == ends[1]["digest"], ends
