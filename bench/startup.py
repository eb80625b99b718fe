"""Start-up time: `llm-wizard --help`, `llm-wizard doctor --json`, and the wizard's first screen.

Each is a fresh interpreter, so imports count. Printed beside a bare `python -c pass` measured in
the same run (the floor no Python program goes below), with min/median/max over several rounds,
interleaved so that a busy machine slows every case alike.

    .venv/bin/python bench/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# Time from process start until the hardware screen shows a probed report, measured inside the
# child (Textual's run_test, headless) and printed; the parent adds nothing of its own.
FIRST_SCREEN = r"""
import asyncio, time, os
t0 = float(os.environ["BENCH_T0"])
from tui.app import make_app

async def main():
    app = make_app(show_runs=False)
    async with app.run_test(size=(100, 30)) as pilot:
        while app.hardware is None or type(app.screen).__name__ != "HardwareScreen" or not app.screen.ready():
            await pilot.pause(0.005)
        import sys
        print(time.time() - t0, "torch" in sys.modules)
        app.exit(0)

asyncio.run(main())
"""

CASES: dict[str, list[str]] = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "llm-wizard --help": [sys.executable, "-m", "tui.cli", "--help"],
    "llm-wizard doctor --json": [sys.executable, "-m", "tui.cli", "doctor", "--json"],
    "first TUI screen ready": [sys.executable, "-c", FIRST_SCREEN],
}


TORCH_SEEN: set[str] = set()


def once(cmd: list[str]) -> float:
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_T0": repr(t0)})
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{cmd[-1][:40]!r} failed:\n{res.stderr}")
    if cmd[-1] == FIRST_SCREEN:
        seconds, torch_loaded = res.stdout.strip().splitlines()[-1].split()
        if torch_loaded == "True":
            TORCH_SEEN.add("first TUI screen")
        return float(seconds)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, cmd in CASES.items():
            times[name].append(once(cmd))
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'case':30} {'min':>8} {'median':>8} {'max':>8} {'x baseline':>11}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:30} {min(ts):8.3f} {med:8.3f} {max(ts):8.3f} {med / base:11.1f}")
    print(f"({args.rounds} interleaved rounds, seconds of wall time)")
    print("torch imported before the first screen:", ", ".join(sorted(TORCH_SEEN)) or "no")


if __name__ == "__main__":
    main()
