"""The trainer's `ranks` on several processes (engine/run/ranks.py has the one-process form): what every rank
must agree on, exchanged through torch.distributed.

Commands: rank 0 reads commands.jsonl and broadcasts what it read at the step boundary, together with any
rank's pending signal (one all_reduce of two integers a step; the bytes only when there are some). The spike
skip compares each step's loss averaged over ranks, on the device, so every rank flags (and skips) the same
steps; metrics are averaged at the log. On NCCL the tensors live on the GPU, on gloo on the CPU.
"""

from __future__ import annotations

import json
import time
from typing import Any

from engine import vocabulary
from engine.run.distributed import zero_engine
from engine.run.ranks import OneProcess


class Ranks(OneProcess):
    def __init__(self, rank: int, world: int, *, spike_skip: bool, zero: bool) -> None:
        self.rank, self.world = rank, world
        self.spike_skip = spike_skip  # without it the step's loss is not exchanged (see step_loss)
        self.zero = zero  # DeepSpeed ZeRO: its own accelerator
        self.accelerator: Any = None
        self.exchange_cost = [0, 0.0, 0.0]  # boundaries, seconds reading commands.jsonl, seconds in collectives

    def make_accelerator(self, spec: Any, batch_size: int, grad_accum: int) -> Any:
        if self.zero:
            t = spec.train
            self.accelerator = zero_engine.make_accelerator(vocabulary.precision(t.precision).autocast,
                                                            batch_size=batch_size, grad_accum=grad_accum,
                                                            grad_clip=t.grad_clip or 0.0)
        else:
            self.accelerator = super().make_accelerator(spec, batch_size, grad_accum)
        return self.accelerator

    def is_deepspeed(self, accelerator: Any) -> bool:
        return zero_engine.is_zero(accelerator)

    def device(self) -> Any:
        import torch.distributed as dist

        return self.accelerator.device if dist.get_backend() == "nccl" else "cpu"

    def step_loss(self, loss: Any) -> Any:
        """The mean loss over ranks, so that every rank flags the same steps as spikes (and as non-finite).
        Reading each rank's flags and all-reducing them at the next read would come too late: the fused
        optimizer has already applied or skipped the step on each rank by then. One all_reduce of a scalar a
        step: on NCCL it is queued on the device (no host sync), on gloo it is a CPU exchange like the
        command exchange each step already does. Without the spike skip, nothing is exchanged: a non-finite
        loss on one rank makes every rank's gradient norm non-finite through DDP's gradient all-reduce."""
        import torch.distributed as dist

        if not self.spike_skip:
            return loss
        agreed = loss.to(self.device())
        dist.all_reduce(agreed)
        return (agreed / self.world).to(loss.device)

    def mean(self, loss: Any, loss_sq: Any) -> tuple[Any, Any]:
        import torch
        import torch.distributed as dist

        both = torch.stack([loss, torch.as_tensor(loss_sq, device=loss.device)]).to(self.device())
        dist.all_reduce(both)
        both = (both / self.world).to(loss.device)
        return both[0], both[1]

    def agree(self, text: str) -> str:
        return self.broadcast_text(text)

    def broadcast_bytes(self, payload: bytes, n: int) -> bytes:
        import torch
        import torch.distributed as dist

        if self.rank == 0:
            buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.device())
        else:
            buf = torch.empty(n, dtype=torch.uint8, device=self.device())
        dist.broadcast(buf, src=0)
        return bytes(buf.cpu().numpy().tobytes())

    def broadcast_text(self, text: str) -> str:
        import torch
        import torch.distributed as dist

        data = text.encode() if self.rank == 0 else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=self.device())
        dist.broadcast(n, src=0)
        return self.broadcast_bytes(data, int(n.item())).decode() if int(n.item()) else ""

    def exchange(self, inbox: Any, pending_signal: int) -> tuple[list[dict[str, Any]], int]:
        """Rank 0's new commands (from `inbox`) and any rank's pending signal, the same on every rank."""
        import torch
        import torch.distributed as dist

        started = time.perf_counter()
        payload = b""
        if self.rank == 0:
            cmds = inbox.poll()
            payload = json.dumps(cmds).encode() if cmds else b""
        polled = time.perf_counter()
        flags = torch.tensor([len(payload), pending_signal], dtype=torch.int64, device=self.device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        n, signum = (int(x) for x in flags.tolist())
        cmds = json.loads(self.broadcast_bytes(payload, n)) if n else []
        self.exchange_cost[0] += 1  # for bench/ddp.py, in status.json: what reading and agreeing costs a step
        self.exchange_cost[1] += polled - started
        self.exchange_cost[2] += time.perf_counter() - polled
        return cmds, signum
