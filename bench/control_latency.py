"""Command-to-acknowledgement latency of a live run, in milliseconds and optimizer steps.

Starts the tiny preset (or --preset) detached, waits until it trains, then sends --n commands
(set_lr with factor 1.0, logging every step so that the step at sending is known: a no-op that still goes through the whole path: commands.jsonl -> the job's
poll at the next step boundary -> control_ack in events.jsonl -> the sender's reader) and reports
the distribution. Stops the run at the end.

    .venv/bin/python bench/control_latency.py [--n 20] [--preset presets/tiny.toml] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import spec  # noqa: E402

from engine.run import job

from engine import processes
from engine.runfolder import folder as runfolder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=str(ROOT / "presets" / "tiny.toml"))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    s = spec.load(a.preset, ["train.max_steps=100000", "eval.every=0", "checkpoint.every=0",
                                "log.every=1"])
    with tempfile.TemporaryDirectory() as tmp:
        run = job.create(s, Path(tmp))
        pid = job.launch(run)
        status = job.wait_started(run, pid)
        if status.get("state") != "running":
            print(f"the run did not start: {status}", file=sys.stderr)
            return 1
        while runfolder.read_status(run).get("step", 0) < 20:  # past warm-up: steady step times
            time.sleep(0.1)
        ms, steps = [], []
        for _ in range(a.n):
            _, offset = runfolder.read_events(run)
            before = runfolder.read_status(run).get("step", 0)
            t0 = time.perf_counter()
            cid = runfolder.send_command(run, "set_lr", factor=1.0)
            ack = runfolder.wait_ack(run, cid, timeout=60, from_offset=offset, poll_s=0.005)
            ms.append(1000 * (time.perf_counter() - t0))
            if ack is None:
                print("no acknowledgement within 60 s", file=sys.stderr)
                return 1
            steps.append(ack["step"] - before)
            time.sleep(0.05)
        events, _ = runfolder.read_events(run)
        step_ms = [e["train/step_ms"] for e in events if e["type"] == "metrics"][-5:]
        cid = runfolder.send_command(run, "stop")
        runfolder.wait_ack(run, cid, timeout=60)
        while processes.pid_alive(pid):
            time.sleep(0.1)
            job._reap(pid)
    result = {"n": a.n, "preset": Path(a.preset).name, "step_ms": round(statistics.median(step_ms), 1),
              "ack_ms_median": round(statistics.median(ms), 1), "ack_ms_p90": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 1),
              "ack_ms_max": round(max(ms), 1), "steps_median": statistics.median(steps), "steps_max": max(steps)}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{result['n']} commands on {result['preset']} (median step {result['step_ms']} ms): ack in "
              f"{result['ack_ms_median']} ms median, {result['ack_ms_p90']} ms p90, {result['ack_ms_max']} ms max; "
              f"{result['steps_median']} optimizer steps median, {result['steps_max']} max (logging every step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
