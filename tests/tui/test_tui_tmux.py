"""End to end in a real terminal: `llm-wizard demo` inside tmux, read with capture-pane. Shows a
loss, pauses and resumes from the keyboard, detaches, and the run is still going afterwards."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


class Tmux:
    """A private tmux server (its own socket) holding one session."""

    def __init__(self, name: str) -> None:
        self.socket = f"llmw-{os.getpid()}-{name}"
        self.name = name

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return done.stdout

    def start(self, command: str, width: int = 100, height: int = 30) -> None:
        subprocess.run(["tmux", "-L", self.socket, "new-session", "-d", "-s", self.name, "-x", str(width),
                        "-y", str(height), command], check=True, timeout=30)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", self.name],
                              capture_output=True, timeout=30).returncode == 0

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} did not appear in {timeout}s; the screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def runs_json(runs: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "tui.cli", "--runs-dir", str(runs), "runs", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_demo_in_tmux_pause_resume_detach(tmp_path) -> None:
    runs = tmp_path / "runs"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "LLM_WIZARD_RUNS": str(runs), "LLM_WIZARD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
        "TERM": "xterm-256color", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}.items())
    term = Tmux("demo")
    # `; sleep` keeps the pane readable after the app exits (its parting message); metrics every 2
    # steps so that a busy CI machine shows a loss sooner
    term.start(f"env {env} {shlex.quote(sys.executable)} -m tui.cli demo --set log.every=2; sleep 30")
    try:
        screen = term.wait_for(r"loss\s+\d+\.\d+", timeout=120)
        assert "RUNNING" in screen
        term.keys("p")
        term.wait_for(r"PAUSED", timeout=60)
        term.keys("p")
        term.wait_for(r"RUNNING", timeout=60)
        term.keys("d")
        term.wait_for(r"The run goes on", timeout=30)
        listed = runs_json(runs)
        assert len(listed) == 1 and listed[0]["state"] in ("running", "paused"), listed
        step = listed[0]["step"]
        deadline = time.monotonic() + 60
        while runs_json(runs)[0]["step"] <= step:  # still training with no UI attached
            assert time.monotonic() < deadline, "the run did not go on after detach"
            time.sleep(1)
    finally:
        term.kill()
        for r in runs_json(runs) if runs.exists() else []:
            if r.get("pid") and r["state"] in ("starting", "running", "paused", "stopping"):
                os.kill(r["pid"], signal.SIGTERM)
