"""The TUI's costs, in one run: time to the first screen, and the CPU the dashboard uses while it
follows a run that logs every step, next to the run's own CPU over the same window.

The dashboard runs as `llm-wizard attach RUN` inside tmux (a real terminal: rendering and output
count); CPU times are read from /proc for both processes, so nothing here is an estimate.

    .venv/bin/python bench/tui.py [--seconds 20] [--rounds 5] [--fake-gpus 8xH100:busy]

--fake-gpus shows the dashboard a fake GPU machine (engine/machine/fake_nvml.py), so the cost of its GPU panel
(NVML read every 2 s, one row per GPU) is in the number; the run itself trains on the CPU either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")

FIRST_SCREEN = r"""
import asyncio, os, sys, time
t0 = float(os.environ["BENCH_T0"])
from tui.app import make_app

async def main():
    app = make_app(show_runs=False)
    async with app.run_test(size=(100, 30)) as pilot:
        while app.hardware is None or not app.screen.ready():
            await pilot.pause(0.005)
        print(time.time() - t0, "torch" in sys.modules)
        app.exit(0)

asyncio.run(main())
"""


def first_screen(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", FIRST_SCREEN], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "BENCH_T0": repr(t0)}, check=True).stdout.split()
        if out[1] == "True":
            raise SystemExit("torch was imported on the way to the first screen")
        times.append(float(out[0]))
    return times


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def follow_cost(seconds: float, runs: Path, fake_gpus: str = "") -> dict[str, float]:
    env = {**os.environ, "LLM_WIZARD_RUNS": str(runs), "LLM_WIZARD_CACHE": str(runs.parent / "cache")}
    started = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(ROOT / "presets" / "tiny.toml"),
                              "--set", "log.every=1", "--set", "train.max_steps=100000", "--json"],
                             capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    run = json.loads(started.stdout)
    job_pid = run["pid"]
    socket = f"llmw-bench-{os.getpid()}"
    try:
        while json.loads((Path(run["path"]) / "status.json").read_text()).get("state") != "running":
            time.sleep(0.5)
        fake = f"LLM_WIZARD_FAKE_GPUS={fake_gpus} " if fake_gpus else ""
        cmd = f"env LLM_WIZARD_RUNS={runs} {fake}TERM=xterm-256color {sys.executable} -m tui.cli attach {run['id']}"
        subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-s", "bench", "-x", "120", "-y", "36", cmd],
                       check=True, cwd=ROOT)
        tui_pid = int(subprocess.run(["tmux", "-L", socket, "list-panes", "-t", "bench", "-F", "#{pane_pid}"],
                                     capture_output=True, text=True, check=True).stdout.split()[0])
        time.sleep(3)  # the app's start-up is measured above; here only the steady following counts
        t0, tui0, job0 = time.monotonic(), cpu_seconds(tui_pid), cpu_seconds(job_pid)
        steps0 = json.loads((Path(run["path"]) / "status.json").read_text())["step"]
        time.sleep(seconds)
        wall = time.monotonic() - t0
        tui, job = cpu_seconds(tui_pid) - tui0, cpu_seconds(job_pid) - job0
        steps = json.loads((Path(run["path"]) / "status.json").read_text())["step"] - steps0
        return {"wall_s": wall, "tui_cpu_s": tui, "job_cpu_s": job, "steps": steps}
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
        subprocess.run([sys.executable, "-m", "tui.cli", "control", run["id"], "stop"], env=env, cwd=ROOT,
                       capture_output=True, timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="how long to measure the following")
    p.add_argument("--rounds", type=int, default=5, help="start-ups to time")
    p.add_argument("--fake-gpus", default="", help="a fake NVML machine for the dashboard, e.g. 8xH100:busy")
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine slows everything here)")
    times = first_screen(args.rounds)
    print(f"first screen (probed report shown, headless): median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {len(times)} rounds; torch not imported)")
    if not shutil.which("tmux"):
        raise SystemExit("tmux is needed for the following measurement (apt-get install tmux)")
    with tempfile.TemporaryDirectory() as tmp:
        r = follow_cost(args.seconds, Path(tmp) / "runs", args.fake_gpus)
    gpus = f", dashboard shown GPUs {args.fake_gpus}" if args.fake_gpus else ""
    print(f"following a run that logs every step{gpus}, {r['wall_s']:.1f} s, {r['steps']} steps "
          f"({r['steps'] / r['wall_s']:.1f} events/s):")
    print(f"  dashboard (attach, in tmux): {r['tui_cpu_s']:.2f} CPU s = {100 * r['tui_cpu_s'] / r['wall_s']:.1f}% of a core")
    print(f"  the run itself:              {r['job_cpu_s']:.2f} CPU s = {100 * r['job_cpu_s'] / r['wall_s']:.1f}% of a core")
    print(f"  dashboard / run: {r['tui_cpu_s'] / max(r['job_cpu_s'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
