"""Tokens/s of the tiny preset with 1 and 2 processes, and what reading and broadcasting commands costs a step.

    .venv/bin/python bench/ddp.py                 # 60 steps each (a few minutes on 2 busy cores)
    .venv/bin/python bench/ddp.py --steps 120 --rounds 2

Each run is a real detached job from presets/tiny.toml (stdlib data, byte tokenizer, one thread per
process, evaluation and interval checkpoints off): one process through engine.run.job, two through the
supervisor and `accelerate launch` (DDP over gloo on the CPU). Tokens/s is the median of the metrics
events after the first two logging intervals; with two processes it is summed over the ranks.

The command cost: with two processes, rank 0's status.json carries the mean time per step boundary spent
reading commands.jsonl and in the exchange (one all_reduce of two integers, plus a broadcast only when
there are commands); the exchange also waits for the slower rank, so it is an upper bound on its own
cost. With one process, the boundary is one CommandReader.poll(), timed here on the run's own folder.

On an idle 2-core machine two one-thread processes could at best use both cores, less an all-reduce of
the gradients per step; this machine is shared (load averages of 10+ on 2 cores while measuring), so
the numbers say how the scheduler shared the cores as much as what DDP costs: two processes get two
shares of a busy machine where one process gets one. The load average is printed with each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]  # bench/tokenize.py shadows tokenize
sys.path.insert(0, str(_here.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_once(processes: int, steps: int, runs: Path) -> dict[str, Any]:
    from engine import spec
    from engine.run import job
    from engine.runfolder import folder as runfolder

    s = spec.load(_here.parent / "presets" / "tiny.toml", [
        f"train.max_steps={steps}", "eval.every=0", "checkpoint.every=0", "log.every=10",
        f"distributed.num_processes={processes}", f'name="ddp{processes}"'])
    load_before = os.getloadavg()[0]
    run = job.create(s, runs)
    pid = job.launch(run)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    events, _ = runfolder.read_events(run)
    metrics = [e for e in events if e["type"] == "metrics"]
    if code != 0 or len(metrics) < 3:
        raise SystemExit(f"{processes} process(es): exit {code}; see {run / 'job.log'}")
    steady = metrics[2:]
    out = {"processes": processes, "tok_s": statistics.median(e["train/tok_per_s"] for e in steady),
           "step_ms": statistics.median(e["train/step_ms"] for e in steady),
           "load": (load_before + os.getloadavg()[0]) / 2, "run": run}
    st = runfolder.read_status(run)
    if processes > 1:
        out["read_ms"], out["sync_ms"] = st["commands_read_ms"], st["commands_sync_ms"]
    else:
        reader = runfolder.CommandReader(run)
        n, t0 = 5000, time.perf_counter()
        for _ in range(n):
            reader.poll()
        out["read_ms"], out["sync_ms"] = 1000 * (time.perf_counter() - t0) / n, 0.0
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LLM_WIZARD_CACHE"] = os.environ.get("LLM_WIZARD_CACHE", str(Path(tmp) / "cache"))
        runs = Path(tmp) / "runs"
        print(f"{os.cpu_count()} CPUs; tiny preset (seq 128, batch 16 per process, 1 thread each), {a.steps} steps")
        print(f"{'procs':>5} {'tok/s':>9} {'step ms':>8} {'read ms':>8} {'sync ms':>8} {'cmd share':>9} {'load':>5}")
        for _ in range(a.rounds):
            for n in (1, 2):
                r = run_once(n, a.steps, runs)
                cmd_ms = r["read_ms"] + r["sync_ms"]
                share = cmd_ms / (r["step_ms"] + cmd_ms)  # of a whole step: the boundary plus the step
                print(f"{n:>5} {r['tok_s']:>9.0f} {r['step_ms']:>8.1f} {r['read_ms']:>8.3f} {r['sync_ms']:>8.3f} "
                      f"{share:>9.2%} {r['load']:>5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
