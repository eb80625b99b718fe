"""The job outlives its terminal: pty hang-up, no terminal fds, SIGTERM saves and exits (RELIABILITY P1, P2, P4, G1)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import spec

from engine import processes
from engine.runfolder import folder as runfolder
from run_helpers import events, make_corpus, tiny_spec, wait_for

pytestmark = pytest.mark.slow


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    assert marker in seen, seen.decode(errors="replace")[-2000:]
    return seen


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=300)


def test_run_survives_pty_hangup_and_sigterm_saves(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 5000}, checkpoint={"every": 1000})
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec.to_toml(s))
    out = tmp_path / "train.json"

    shell, master = pty.fork()
    if shell == 0:  # the child: an interactive shell on the pseudo-terminal, as after `ssh vm`
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    job_pid = None
    try:
        os.write(master, f"{sys.executable} -m tui.cli train {spec_file} --json --step-sleep 0.03 > {out}; "
                         f"echo LAUNCHED-$?\n".encode())
        _read_until(master, b"LAUNCHED-0", 300)
        info = json.loads(out.read_text())
        job_pid, run = info["pid"], Path(info["path"])
        assert set(info) == {"id", "path", "pid"} and run.name == info["id"]

        # the job is in its own session and holds no terminal: stdin /dev/null, stdout/stderr job.log
        assert os.getsid(job_pid) == job_pid != os.getsid(shell)
        fds = {fd: os.readlink(f"/proc/{job_pid}/fd/{fd}") for fd in ("0", "1", "2")}
        assert fds["0"] == "/dev/null" and fds["1"] == fds["2"] == str(run / "job.log"), fds
        assert not any(os.readlink(f"/proc/{job_pid}/fd/{fd}").startswith("/dev/pts")
                       for fd in os.listdir(f"/proc/{job_pid}/fd"))

        before = wait_for(lambda: (st := runfolder.read_status(run)).get("step", 0) >= 5 and st, 240, "step 5")
        os.close(master)  # the connection drops: the kernel hangs up the terminal, bash gets SIGHUP
        master = -1
        _, status = os.waitpid(shell, 0)
        assert os.WIFSIGNALED(status) or os.WIFEXITED(status)
        os.kill(job_pid, signal.SIGHUP)  # a hang-up signal sent straight to the job is ignored too
        after = wait_for(lambda: (st := runfolder.read_status(run))["step"] >= before["step"] + 10 and st, 240,
                         "10 more steps after the hang-up")
        assert after["state"] == "running" and processes.pid_alive(job_pid) and after["updated"] > before["updated"]
        losses = [e["train/loss"] for e in events(run, "metrics")]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # still learning after the hang-up

        # the contracts scripts use: control --json and runs --json
        res = _cli("control", run.name, "pause", "--json")
        assert res.returncode == 0, res.stderr
        ack = json.loads(res.stdout)
        assert {"id", "cmd", "ok", "step", "message"} <= set(ack) and ack["ok"] and ack["cmd"] == "pause"
        res = _cli("runs", "--json")
        listed = {r["id"]: r for r in json.loads(res.stdout)}
        assert {"id", "path", "state", "technique", "step", "loss", "pid", "started"} <= set(listed[run.name])
        assert listed[run.name]["state"] == "paused" and listed[run.name]["pid"] == job_pid

        # SIGTERM (even while paused): save at the current step and exit
        paused_at = runfolder.read_status(run)["step"]
        t0 = time.monotonic()
        os.kill(job_pid, signal.SIGTERM)
        wait_for(lambda: not processes.pid_alive(job_pid), 240, "the job to exit")
        assert time.monotonic() - t0 < 30  # one step + a tiny save + exit, with room for a loaded machine
        final = runfolder.read_status(run)
        assert final["state"] == "stopped" and final["step"] == paused_at
        assert events(run, "checkpoint")[-1]["step"] == paused_at
        assert (run / "checkpoints" / f"step-{paused_at:06d}" / "manifest.json").is_file()
        log = (run / "job.log").read_text()
        assert "OSError" not in log and "Traceback" not in log, log[-2000:]
    finally:
        if master >= 0:
            os.close(master)
        if job_pid and processes.pid_alive(job_pid):
            os.kill(job_pid, signal.SIGKILL)


def test_foreground_ctrl_c_saves_and_oom_backoff_keeps_the_effective_batch(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 5000, "batch_size": 4, "oom_backoff": True},
                  checkpoint={"every": 1000})
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec.to_toml(s))
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli", "train", str(spec_file), "--foreground", "--step-sleep",
                             "0.02"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LLMW_FAULT": "oom@step:3"})
    try:
        lines = []
        while not any(line.startswith("[metrics]") and '"step": 8,' in line for line in lines[-1:]):
            line = proc.stdout.readline()
            assert line, "".join(lines)[-3000:]
            lines.append(line)
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the terminal
        rest, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 11, rest
    (run,) = Path(os.environ["LLM_WIZARD_RUNS"]).iterdir()
    status = runfolder.read_status(run)
    assert status["state"] == "stopped" and status["step"] >= 8
    (alert,) = [e for e in events(run, "alert") if e["kind"] == "oom"]
    assert alert["step"] == 2 and "halved to 2" in alert["message"]
    tokens = [e["tokens"] for e in events(run, "metrics")]
    assert all(b - a == 4 * 32 for a, b in zip(tokens, tokens[1:]))  # same tokens per step before and after
    state = json.loads((run / "checkpoints" / f"step-{status['step']:06d}" / "trainer_state.json").read_text())
    assert (state["batch_size"], state["grad_accum"]) == (2, 2)
    assert "[done]" in rest
