"""What differs between one training process and several, as the small object the trainer holds (`ranks`).

The trainer's loop is the same on one process and on every rank of several; where they differ it asks this
object: which accelerator to make, which micro-batch of the global position is this process's, the loss the
spike skip compares (the mean over ranks), the metrics' mean over ranks, and a choice every rank must make
alike (`agree`: rank 0's). `OneProcess` is the identity everywhere; engine/run/distributed/collectives.py
has the several-process one. Saving and loading, which rank 0 leads, stay with DistributedTrainer.
"""

from __future__ import annotations

from typing import Any

from engine import vocabulary


class OneProcess:
    rank = 0
    world = 1

    def make_accelerator(self, spec: Any, batch_size: int, grad_accum: int) -> Any:
        import torch
        from accelerate import Accelerator

        return Accelerator(mixed_precision=vocabulary.precision(spec.train.precision).autocast,
                           cpu=not torch.cuda.is_available())

    def is_deepspeed(self, accelerator: Any) -> bool:
        """Whether accelerate handed back DeepSpeed's engine (strategy zero2/zero3: several processes only)."""
        return False

    def step_loss(self, loss: Any) -> Any:
        """The step's loss as the spike skip compares it."""
        return loss

    def mean(self, loss: Any, loss_sq: Any) -> tuple[Any, Any]:
        """An interval's summed loss and squared loss, averaged over the processes."""
        return loss, loss_sq

    def agree(self, text: str) -> str:
        """Rank 0's choice, the same on every process."""
        return text
