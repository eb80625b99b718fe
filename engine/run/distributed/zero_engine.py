"""DeepSpeed ZeRO-2/3 runs (distributed.strategy zero2/zero3): the accelerator and the optimizer step. The
checkpoint format of such a run is engine/checkpoints/zero.py.

The step: DeepSpeed's engine owns accumulation, clipping and the optimizer step. `engine.backward` divides the
loss by its gradient_accumulation_steps (set to the trainer's grad_accum) and `engine.step()` steps only at the
accumulation boundary, skipping a step whose gradients are not finite (was_step_applied() says so), so the
learning rate is applied before the micro-batches and clipping is DeepSpeed's `gradient_clipping`.
"""

from __future__ import annotations

from typing import Any

from engine.run import escalation as numerics
from engine.run.watchdogs import fault


def is_zero(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def make_accelerator(mixed_precision: str, *, batch_size: int, grad_accum: int, grad_clip: float) -> Any:
    """The Accelerator of a rank started by `accelerate launch` with a DEEPSPEED config. On a machine without
    CUDA accelerate finds no backend for DeepSpeed and counts one process, so gloo is named explicitly."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    acc = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=handlers)
    config = acc.state.deepspeed_plugin.deepspeed_config
    # No dataloader goes through accelerate.prepare: the batch sizes DeepSpeed checks are the trainer's.
    config.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=grad_accum,
                  train_batch_size=batch_size * grad_accum * acc.num_processes, gradient_clipping=grad_clip,
                  zero_allow_untested_optimizer=True, steps_per_print=2**31 - 1)
    return acc


def train_step(trainer: Any) -> bool:
    """One optimizer step through DeepSpeed's engine (what Trainer._train_step does otherwise); False if it was
    skipped (a non-finite loss or gradient: DeepSpeed left the weights alone)."""
    import time

    import torch

    if trainer.rollback_due is not None:
        escalation, trainer.rollback_due = trainer.rollback_due, None
        numerics.auto_rollback(trainer, escalation)
        return False
    engine = trainer.model
    trainer.tries += 1
    started, at = time.perf_counter(), (trainer.epoch, trainer.position)
    lr = trainer.schedule.apply(trainer.optimizer, trainer.step)  # DeepSpeed steps inside the last engine.step()
    loss_sum = torch.zeros((), device=trainer.accelerator.device)
    for _ in range(trainer.grad_accum):
        batch = trainer._next_batch()
        with trainer.accelerator.autocast():
            loss = trainer.technique.loss(trainer.prep, batch)
        if fault("nan", trainer.step + 1, trainer.tries) is not None:
            loss = loss * float("nan")
        engine.backward(loss)  # divided by gradient_accumulation_steps inside
        engine.step()  # a no-op until the accumulation boundary
        loss_sum += loss.detach() / trainer.grad_accum
    norm = engine.get_global_grad_norm()
    grad_norm = torch.as_tensor(float("nan") if norm is None else float(norm), device=loss_sum.device)
    flags = torch.stack([~torch.isfinite(loss_sum), ~torch.isfinite(grad_norm)]).to(torch.int64)
    span = [*at, trainer.epoch, trainer.position]
    iv = trainer.interval
    iv.start = iv.start or at
    if not engine.was_step_applied():  # DeepSpeed's overflow check is global: every rank is here together
        import torch.distributed as dist

        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # so the ranks escalate (pause, roll back) alike
        if engine.fp16_enabled() and not bool(flags[0]):
            return False  # fp16: an overflow is DeepSpeed's loss scaling at work (it lowered the scale), not a fault
        escalation = numerics.on_flags(trainer, [[bool(flags[0]), True]], [span], trainer.step)
        if escalation is not None:
            numerics.escalate(trainer, escalation)
        return False
    if trainer.watchdogs.state.get("nonfinite_run"):
        numerics.on_flags(trainer, [[False, False]], [span], trainer.step)
    trainer.step += 1
    tokens = trainer.batch_size * trainer.grad_accum * trainer.spec.train.seq_len * trainer.ranks.world  # all ranks'
    trainer.tokens += tokens
    iv.loss += loss_sum
    iv.steps += 1
    iv.tokens += tokens
    iv.grad_norm = grad_norm
    iv.lr = lr
    if trainer.step_sleep:
        time.sleep(trainer.step_sleep)
    iv.seconds += time.perf_counter() - started
    return True
