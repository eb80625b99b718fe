"""`runs`, `control pause` and `attach --text` (the tail) against events.jsonl of 10 MB, 100 MB and 1 GB.

Builds a run folder per size in a temp dir (events.jsonl of metrics lines written in 4 MiB blocks: 1 GB in
a few seconds), with status.json pointing at a fake live job: a small process that reads commands.jsonl
with the job's own CommandReader and appends a control_ack for each, so `control pause` goes the whole way
(sent, read, acknowledged). Each command runs in a fresh process; the time of its `main()` and the
process's peak resident memory (ru_maxrss, imports included) are printed, with ratios against the 10 MB
baseline measured in the same run. Not a timed test: numbers for docs and for a reader who doubts.

    .venv/bin/python bench/events_scale.py [--sizes 10,100,1000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import processes  # noqa: E402
from engine.runfolder import events as ev  # noqa: E402
from engine.runfolder import folder as runfolder  # noqa: E402

FAKE_JOB = """
import sys, time
from pathlib import Path
from engine.runfolder import events as ev
from engine.runfolder.commands import CommandReader
run = Path(sys.argv[1])
reader, log = CommandReader(run), ev.EventLog(run)
while True:
    for c in reader.poll():
        log.emit(ev.ControlAck(id=c.get("id"), cmd=c.get("cmd"), step=7, ok=True, message="paused at step 7"))
    time.sleep(0.02)
"""

MEASURE = """
import json, resource, sys, time
from tui.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "s": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def build_events(path: Path, size: int) -> None:
    """About `size` bytes of metrics lines, the last one a fresh step."""
    line = ev.Metrics(step=1, epoch=0.5, tokens=4096, eta_s=60.0, branch=0, train_loss=2.5, train_lr=3e-4,
                      train_grad_norm=1.0, train_tok_per_s=1e5, train_step_ms=40.0, train_mfu=None,
                      train_loss_smooth=2.5).to_json().encode() + b"\n"
    block = line * ((4 << 20) // len(line))
    with open(path, "wb") as f:
        written = 0
        while written + len(block) <= size:
            f.write(block)
            written += len(block)
        f.write(line * max(0, (size - written) // len(line)))


def measure(argv: list[str]) -> dict[str, float]:
    p = subprocess.run([sys.executable, "-c", MEASURE, *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "COLUMNS": "200"})
    result = json.loads(p.stderr.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{argv}: exit {result['code']}: {p.stdout[-500:]} {p.stderr[-500:]}")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,100,1000", help="MB, comma-separated; the first is the baseline")
    p.add_argument("--repeat", type=int, default=3, help="runs per command and size (the fastest is kept)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        measure(["runs", "--runs-dir", tmp])  # warm the file cache with the imports: the baseline is not a cold start
        for mb in sizes:
            runs = Path(tmp) / f"runs-{mb}"
            run = runfolder.create_run(runs, "scale", "technique = 'scratch'\n", run_id=f"scale-{mb}")
            t0 = time.perf_counter()
            build_events(run / ev.EVENTS, mb * 1_000_000)
            built = time.perf_counter() - t0
            fake = subprocess.Popen([sys.executable, "-c", FAKE_JOB, str(run)], cwd=ROOT)
            try:
                runfolder.write_status(run, {"state": "running", "pid": fake.pid, "step": 7, "technique": "scratch",
                                             "pid_start": processes.pid_start_time(fake.pid)})
                time.sleep(1.0)  # the fake job's imports
                for name, argv in (("runs", ["runs", "--runs-dir", str(runs)]),
                                   ("control pause", ["control", str(run), "pause", "--timeout", "60"]),
                                   ("attach tail", ["attach", str(run), "--text", "--last", "20"])):
                    best = min((measure(argv) for _ in range(a.repeat)), key=lambda r: r["s"])
                    rows.append({"size_mb": mb, "command": name, "s": best["s"], "rss_mb": best["rss_mb"]})
            finally:
                fake.kill()
                fake.wait()
            print(f"built {mb} MB of events in {built:.1f} s", file=sys.stderr)
            (run / ev.EVENTS).unlink()
    base = {r["command"]: r for r in rows if r["size_mb"] == sizes[0]}
    for r in rows:
        b = base[r["command"]]
        r["time_ratio"] = r["s"] / b["s"]  # type: ignore[operator]
        r["rss_ratio"] = r["rss_mb"] / b["rss_mb"]  # type: ignore[operator]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'events.jsonl':>12}  {'command':<14} {'time':>9} {'x base':>7} {'peak RSS':>10} {'x base':>7}")
    for r in rows:
        print(f"{r['size_mb']:>9} MB  {r['command']:<14} {r['s'] * 1000:>7.1f}ms {r['time_ratio']:>7.2f} "
              f"{r['rss_mb']:>7.1f} MB {r['rss_ratio']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
