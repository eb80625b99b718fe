"""The shared training loop on several processes (one per GPU, started by `accelerate launch`).

`DistributedTrainer` is engine.run.trainer.Trainer holding a `Ranks` (engine/run/distributed/collectives.py)
for what its loop asks of the processes (the accelerator, this rank's micro-batch of the global position,
the loss the spike skip compares and the metrics averaged over ranks, rank 0's choices), plus what changes
in leading the run folder when there are several ranks:
- rank 0 alone writes events, status and checkpoints (the others keep the same state in memory);
- commands: rank 0 reads commands.jsonl, then broadcasts them at the same step boundary, so pause, set_lr,
  rollback, rescue and stop act on every rank before the same step; a stop asked by a signal on any rank
  is agreed on in the same exchange;
- skipped steps: every rank must skip the same ones or the weights part. The gradient norm is the same
  everywhere (DDP averaged the gradients) but the loss is each rank's own, so with the spike skip on each
  step's loss is averaged over ranks on the device before the flags are taken (`Ranks.step_loss`):
  identical flags, hence identical skips, streaks, pauses and rollbacks, with no host sync; an automatic
  rollback loads the checkpoint rank 0 chose (`agree`);
- FSDP (accelerate's fsdp_version 2, GPUs only): parameters are DTensor shards, so checkpoints, resume,
  rollback and final/ go through engine/checkpoints/fsdp.py, where every rank writes and reads its own
  shards inside rank 0's atomic save and final/ is consolidated into a normal from_pretrained folder;
- DeepSpeed ZeRO-2/3 (zero2/zero3): the same, through engine/checkpoints/zero.py (same function names), and
  the optimizer step is DeepSpeed's engine's (engine/run/distributed/zero_engine.py).

A test hook (env LLM_WIZARD_RANK_PROBE=1) makes every rank append its step, pause state, learning rate
and a digest of its parameters to `<run>/ranks/rank-<r>.jsonl` at each step boundary and after each
command, so tests can see that all ranks act together.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from engine.checkpoints import fsdp as sharded_checkpoint
from engine.checkpoints import store as checkpoint
from engine.checkpoints import zero as zero_checkpoint
from engine.errors import UserError
from engine.processes import pid_start_time
from engine.run import controls
from engine.runfolder import events as ev
from engine.run.distributed import zero_engine
from engine.run.distributed.collectives import Ranks
from engine.run.meter import Interval
from engine.run.trainer import EXIT_SIGNAL, Trainer

PROBE_ENV = "LLM_WIZARD_RANK_PROBE"
SUPERVISOR_PID_ENV = "LLM_WIZARD_SUPERVISOR_PID"


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size, from the variables `accelerate launch` sets."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def param_digest(model: Any) -> str:
    """A hash of every parameter's bytes: equal on two ranks only if the parameters are identical."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _NoEvents:
    """What ranks other than 0 write instead of events: nothing."""

    def emit(self, event: ev.Event, flush: bool = True) -> ev.Event:
        return event

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class DistributedTrainer(Trainer):
    sharded = False  # FSDP2 (DTensor shards) or ZeRO (DeepSpeed partitions): set in _prepare
    zero = False  # DeepSpeed's engine steps, saves and loads (engine/checkpoints/zero.py)
    _shards: Any = sharded_checkpoint  # the module that saves, loads and consolidates this run's shards

    def __init__(self, run: Path, spec: Any, *, rank: int, world: int, **kw: Any) -> None:
        super().__init__(run, spec, **kw)
        self.rank, self.world = rank, world
        self.ranks = Ranks(rank, world, spike_skip=spec.train.spike_skip,
                           zero=spec.distributed.strategy.startswith("zero"))
        self.writes_files = rank == 0
        self.pending_signal: int = 0  # a signal this rank received, not yet agreed on by all ranks
        if rank:
            self.events.close()
            self.events = _NoEvents()  # type: ignore[assignment]
        self._probe = Path(run) / "ranks" / f"rank-{rank}.jsonl" if os.environ.get(PROBE_ENV) else None
        self._probed: tuple[int, bool] | None = None
        sup = os.environ.get(SUPERVISOR_PID_ENV, "")
        self._status_pid = int(sup) if sup.isdigit() else os.getpid()

    # ---- signals and status -------------------------------------------------------------------

    def signal_stop(self, signum: int) -> None:
        """From a signal handler: before the loop each rank stops its own preparation; in the loop the
        stop is agreed on at the next boundary, so no rank leaves a collective the others are in."""
        import signal

        if self.looping:
            self.pending_signal = self.pending_signal or signum
        else:
            self.request_stop(signal.Signals(signum).name)

    def write_status(self, **extra: Any) -> None:
        if self.rank:
            self._last_status = time.monotonic()
            return
        # The supervisor's pid: the process a reader checks for life and signals to stop the whole run.
        n, read_s, sync_s = self.ranks.exchange_cost
        super().write_status(pid=self._status_pid, pid_start=pid_start_time(self._status_pid),
                             rank0_pid=os.getpid(), world_size=self.world, commands_read_ms=1000 * read_s / max(n, 1),
                             commands_sync_ms=1000 * sync_s / max(n, 1), **extra)

    def _fail(self, message: str, kind: str, code: int, **extra: Any) -> int:
        """Rank 0 reports its error; the `done` event is the supervisor's, which knows which rank died first."""
        from engine.runfolder.redact import redact

        if self.rank:
            print(f"error: rank {self.rank}: {redact(message)}", flush=True)  # job.log; rank 0 writes the event
            return code

        message = redact(message)
        extra = {k: redact(v) if isinstance(v, str) else v for k, v in extra.items()}
        self.events.emit(ev.Error(message=message, kind=kind, step=self.step, rank=0, **extra))
        self.set_state("failed", message)
        return code

    # ---- the loop's hooks ---------------------------------------------------------------------

    def _prepare(self) -> None:
        import torch.distributed as dist

        super()._prepare()
        self.zero = zero_engine.is_zero(self.accelerator)
        self._shards = zero_checkpoint if self.zero else sharded_checkpoint
        self.sharded = self.zero or sharded_checkpoint.is_sharded(self.model)
        self._announce_load = False
        # Each rank prepared its own data: a rank with other data (another tokenizer, another file on a
        # machine without shared storage) would train on something else while DDP keeps the weights equal.
        prints = [None] * self.world
        dist.all_gather_object(prints, self.prep.data_fingerprint)
        if len(set(prints)) > 1:
            raise UserError(f"the ranks prepared different data (fingerprints {sorted(set(map(str, prints)))}); "
                            "every machine must see the same data and tokenizer", field="data.path")
        t, d = self.spec.train, self.spec.distributed
        self.events.emit(ev.State(state="starting", step=0, world_size=self.world, strategy=d.strategy,
                         num_machines=d.num_machines, total_steps=self.total_steps,
                         backend=dist.get_backend(), device=str(self.accelerator.device),
                         tokens_per_step=t.seq_len * self.batch_size * self.grad_accum * self.world,
                         message=f"{self.world} processes ({d.strategy}, {dist.get_backend()}) on "
                                 f"{d.num_machines} machine(s)"))

    def _handle_commands(self) -> None:
        import signal

        cmds, signum = self.ranks.exchange(self.commands, self.pending_signal)
        if signum and not self.stop_reason:
            self.request_stop(signal.Signals(signum).name)
        for cmd in cmds:
            if cmd.get("cmd") == "stop" and cmd.get("signal"):  # the supervisor passing on a signal
                self.request_stop(str(cmd["signal"]))
                self.events.emit(ev.ControlAck(id=cmd.get("id"), cmd="stop", step=self.step, ok=True,
                                               message=f"saving and stopping ({cmd['signal']})"))
                continue
            if cmd.get("cmd") == "?":
                ack = {"ok": False, "message": f"not a command: {cmd.get('invalid')!r}"}
            else:
                ack = controls.handle(self, cmd)
            self.events.emit(ev.ControlAck(id=cmd.get("id"), cmd=cmd.get("cmd"), step=self.step, **ack))
            self._write_probe(cmd=cmd.get("cmd"), ok=ack.get("ok"))
        if self._probed != (self.step, self.paused):
            self._write_probe()

    def _train_step(self) -> bool:
        return zero_engine.train_step(self) if self.zero else super()._train_step()

    def save_checkpoint(self, reason: str) -> checkpoint.CheckpointInfo | None:
        """Rank 0 writes (sharded: every rank writes its shards into rank 0's save); every rank learns its
        outcome (name, or none and paused) before going on."""
        # Every rank reads its skipped-step flags here, together: a `save` command can come between two logs,
        # and settling inside rank 0's save alone would run _log_metrics' all_reduce on one rank (a hang).
        self._settle_guard()
        info = None
        if self.sharded:
            self._shards_bad = self._shards.any_nonfinite(self.model, self.optimizer)
            if self.rank == 0:
                self._leader = self._shards.Leader(self.model, self.optimizer, self.world)
                try:
                    info = super().save_checkpoint(reason)
                finally:
                    self._leader.finish(info.name if info else None)
            else:
                self._shards.follow(self.model, self.optimizer, rank=self.rank, world=self.world)
        elif self.rank == 0:
            info = super().save_checkpoint(reason)
        outcome = self.ranks.broadcast_text(json.dumps([info.name if info else "", self.paused]))
        name, paused = json.loads(outcome)
        if self.rank and paused and not self.paused:
            self.paused = True
        if not name:
            return None
        if self.rank:
            info = checkpoint.CheckpointInfo(name, self.run / checkpoint.CHECKPOINTS / name, self.step, self.branch,
                                             self.parent)
            self.parent = name
        return info

    def _nonfinite_state(self) -> list[str]:
        if self.sharded:  # every rank checked its own shards in save_checkpoint
            return ["a parameter or optimizer shard"] if self._shards_bad else []
        return super()._nonfinite_state()

    def _write_weights(self, folder: Path) -> None:
        if self.sharded:
            self._leader.write(folder)  # the other ranks write their shards into the same folder
        else:
            super()._write_weights(folder)

    def _load_weights(self, folder: Path) -> None:
        if not self.sharded:
            if sharded_checkpoint.is_sharded_checkpoint(folder):
                kind = "DeepSpeed ZeRO" if zero_checkpoint.is_zero_checkpoint(folder) else "FSDP"
                raise UserError(f"{folder.name} holds {kind} shards; resume it with the distributed.strategy that "
                                "saved it, on the same number of processes", field="distributed.strategy")
            super()._load_weights(folder)
            return
        if self._announce_load:  # rank 0 resuming: the others wait in _resume to load the same one with us
            self._announce_load = False
            self.ranks.broadcast_text(folder.name)
        self._shards.read_shards(folder, self.model, self.optimizer, world=self.world)

    def _wait_for_space(self, message: str, kind: str, ready: Any = None) -> None:
        """Rank 0 is inside a save that the other ranks wait on: pausing here would pair its command
        exchanges with their wait and hang both. End the run instead; the previous checkpoint is intact."""
        self.events.emit(ev.Alert(step=self.step, kind=kind, message=message, suggest="resume", severity="error"))
        raise UserError(f"{message} (with several processes the run ends here; the previous checkpoint is "
                        f"intact: free space, then `llm-wizard train --resume {self.run.name}`)", field="checkpoint")

    def _resume(self) -> None:
        """Rank 0 chooses the checkpoint (and cleans up); every rank loads that one."""
        name = ""
        if self.rank == 0:
            self._announce_load = self.sharded  # a sharded load is collective: name it before loading
            super()._resume()
            if self.sharded:
                return
            name = self.parent or ""
        name = self.ranks.broadcast_text(name)
        if self.rank:
            self._load(checkpoint.find(self.run, name))

    def rollback(self, info: checkpoint.CheckpointInfo) -> None:
        if self.rank == 0:
            super().rollback(info)
            return
        import torch

        self.supersede_auto_rollback(info)  # as on rank 0 (which alone emits the alert)
        self._load(info)  # the branch bookkeeping on disk is rank 0's
        self.interval = Interval(loss=torch.zeros((), device=self.accelerator.device))

    def _save_final(self) -> tuple[Path, dict[str, Any]]:
        if self.sharded:
            return self._save_final_sharded()
        if self.rank:
            return self.run / "final", {}
        return super()._save_final()

    def _save_final_sharded(self) -> tuple[Path, dict[str, Any]]:
        """Every rank gives its shards; rank 0 writes final/ whole (from_pretrained, safetensors) or not at all."""
        import shutil

        from engine.models.pretrained import unwrap

        final, tmp = self.run / "final", self.run / ".tmp-final"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        model = self.model if self.zero else unwrap(self.model)  # ZeRO gathers through DeepSpeed's engine
        self._shards.consolidate(model, tmp, rank=self.rank, tokenizer=self.prep.tokenizer)
        if self.rank:
            return final, {}
        checkpoint.write_manifest(tmp, name="final", step=self.step)  # read back verified (RELIABILITY C14)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final, {"summary": f"consolidated from {self.world} shards"}

    def run_job(self) -> int:
        code = super().run_job()
        if self._probe is not None and getattr(self, "model", None) is not None:
            self._write_probe(end=True, code=code)
        self._shut_down(clean=code in (0, EXIT_SIGNAL))
        return code

    def _shut_down(self, clean: bool) -> None:
        """Leave the process group in order: a rank tearing gloo down at interpreter exit while its peer still
        talks to it was seen to abort ("terminate called without an active exception", SIGABRT) after a run
        that had finished. After a clean end every rank meets at a barrier first; after a failure a barrier
        could wait forever, so only this rank's side is closed."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return
        try:
            if clean:
                dist.barrier()
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the run's outcome is already written; exiting matters more
            pass

    # ---- test hook ----------------------------------------------------------------------------

    def _write_probe(self, **fields: Any) -> None:
        if self._probe is None:
            return
        self._probed = (self.step, self.paused)
        self._probe.parent.mkdir(exist_ok=True)
        row = {"rank": self.rank, "pid": os.getpid(), "step": self.step, "paused": self.paused, "t": time.time(),
               "lr": self.schedule.lrs(self.step)[0], "multiplier": self.schedule.multiplier,
               "position": [self.epoch, self.position], **fields}
        if fields:  # a digest after each command and at the end (cheap on the tiny test models only)
            row["digest"] = param_digest(self.prep.model)
        with open(self._probe, "a") as f:
            f.write(json.dumps(row) + "\n")
