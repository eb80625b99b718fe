"""One rank of a multi-process run: `accelerate launch ... -m engine.run.distributed.worker RUN` starts this on every GPU.

The supervisor (engine/run/distributed/supervisor.py) holds the run folder's lock and reports a rank that dies;
this process trains with engine.run.distributed.trainer.DistributedTrainer. SIGTERM/SIGINT ask for a stop that all
ranks agree on at the next step boundary (a second one exits at once); SIGHUP is ignored.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from engine.errors import UserError

EXIT_SECOND_SIGNAL = 130
ECHO_ENV = "LLM_WIZARD_ECHO_EVENTS"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.run.distributed.worker", description="one rank of a multi-process run")
    p.add_argument("run", type=Path)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step (tests)")
    p.add_argument("--commands-from", type=int, default=None, help="byte offset in commands.jsonl to start at")
    a = p.parse_args(argv)

    from engine.runfolder import folder as runfolder
    from engine import spec as spec_mod
    from engine.run.distributed.trainer import DistributedTrainer, rank_and_world

    import torch

    if not torch.cuda.is_available():  # accelerate would say "cpu:<rank>", which torch.load cannot map to
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    run = a.run.resolve()
    rank, world = rank_and_world()
    try:
        spec = spec_mod.load(run / runfolder.SPEC)
    except UserError as e:  # the supervisor checked it already; it changed on disk since
        print(f"error: rank {rank}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    from engine.run.process import echo as echo_event, ignore_late_signals

    echo = echo_event if rank == 0 and os.environ.get(ECHO_ENV) else None  # `train --foreground`: events on the terminal
    trainer = DistributedTrainer(run, spec, rank=rank, world=world, resume=a.resume, step_sleep=a.step_sleep,
                                 commands_from=a.commands_from, echo=echo)

    def on_signal(signum: int, frame: Any) -> None:
        if trainer.stop_reason or trainer.pending_signal:  # a second signal means now; checkpoints are written atomically
            os._exit(EXIT_SECOND_SIGNAL)
        trainer.signal_stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = trainer.run_job()
    ignore_late_signals()
    return code


if __name__ == "__main__":
    sys.exit(main())
