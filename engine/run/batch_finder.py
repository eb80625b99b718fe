"""The preflight batch finder (RELIABILITY O1, O6): before the first step, probe real training steps for
the largest micro-batch that fits with a margin, keeping the effective batch (micro-batch x accumulation).
With train.oom_backoff, a step that runs out of memory later backs off the same way (`back_off`).

When (train.find_batch): "on" always, "off" never, "auto" (the default) on a CUDA device when the
estimator (engine/estimate/memory.py) says the spec's micro-batch is tight or does not fit in the memory this
process can have, or cannot tell. The CPU has no out-of-memory to find (the kernel's OOM killer ends the
process instead), so "auto" leaves it alone. Never on resume (the checkpoint holds the choice in
trainer_state's batch_size and grad_accum) and never with several processes (each rank would probe on
its own while DDP's backward waits for all of them).

A probe is one forward and backward of a micro-batch of the run's own data at seq_len (every batch is
that long, so it is the worst case), without the optimizer step. Its gradients are cleared, and the RNG
state, the data position and the technique's metric accumulators are put back, so the run trains exactly
as it would have with that micro-batch from the start. On CUDA a probe measures its peak and adds the
optimizer states the first step will allocate; above margin x the memory this process can have it does
not count as fitting, so the margin is headroom in memory (engine/run/oom.find_micro_batch).

Test hook: LLMW_FAULT=oom_over:<tokens> wraps the technique so that the loss of a training micro-batch of
more than <tokens> tokens raises torch.OutOfMemoryError: a device of that size on the CPU, for the probes
and the training steps alike.
"""

from __future__ import annotations

from typing import Any

from engine.run import step_guard
from engine.run.oom import NoBatchFits, find_micro_batch, gib, no_fit_report
from engine.run.train_state import rng_state, set_rng_state
from engine.run.watchdogs import fault_budget, oom_alert
from engine.runfolder import events as ev

MARGIN = 0.9  # use at most 90% of the memory: the estimator's 10% for the allocator's fragmentation
class FakeAllocator:
    """A technique whose training loss runs out of memory above a token budget (LLMW_FAULT=oom_over:N)."""

    def __init__(self, technique: Any, seq_len: int, budget: int) -> None:
        self._technique, self._seq_len, self._budget = technique, seq_len, budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._technique, name)

    def loss(self, prep: Any, batch: Any) -> Any:
        import torch

        tokens = int(batch.shape[0]) * self._seq_len
        if torch.is_grad_enabled() and tokens > self._budget:
            raise torch.OutOfMemoryError(f"CUDA out of memory (LLMW_FAULT oom_over:{self._budget}): a micro-batch "
                                         f"of {batch.shape[0]} x {self._seq_len} tokens")
        return self._technique.loss(prep, batch)


def with_fault_allocator(technique: Any, seq_len: int) -> Any:
    budget = fault_budget()
    return technique if budget is None else FakeAllocator(technique, seq_len, budget)


def preflight(trainer: Any) -> dict[str, Any] | None:
    """Run the finder if this run wants it (see the module doc), set the trainer's micro-batch and
    accumulation, announce the choice and return it for trainer_state; None when it did not run."""
    reason = reason_to_run(trainer)
    if reason is None:
        return None
    t = trainer.spec.train
    effective = trainer.batch_size * trainer.grad_accum
    cuda = trainer.accelerator.device.type == "cuda"
    available = cuda_available_bytes(trainer.accelerator.device) if cuda else None
    limit = int(MARGIN * available) if available else None
    extra_bytes = optimizer_state_bytes(trainer) if cuda else 0
    prep = trainer.prep
    saved_rng, saved_extra, model = rng_state(), dict(prep.extra), prep.model
    # a compiled model would recompile for every probed shape; eager needs at least as much memory
    prep.model = getattr(model, "_orig_mod", model)
    trainer.events.emit(ev.State(state="starting", step=trainer.step, message=f"finding the micro-batch that fits "
                                 f"({reason})"))
    try:
        choice = find_micro_batch(lambda b: probe_step(trainer, b, extra_bytes), effective, margin=MARGIN,
                                  limit_bytes=limit)
    except NoBatchFits:  # RELIABILITY O6: the report for this run, with the estimator's numbers and options
        raise NoBatchFits(no_fit_report(effective, no_fit_numbers(trainer, available),
                                        no_fit_options(trainer, available)),
                          field="train.batch_size", exit_code=3) from None
    finally:
        set_rng_state(saved_rng)
        prep.extra.clear()
        prep.extra.update(saved_extra)
        prep.model = model
        trainer.optimizer.zero_grad(set_to_none=True)
    trainer.batch_size, trainer.grad_accum = choice.micro_batch, choice.grad_accum
    asked = (t.batch_size, t.grad_accum)
    note = "" if asked == (choice.micro_batch, choice.grad_accum) else f" (the spec asked for {asked[0]} x {asked[1]})"
    message = f"batch finder: {choice.message()}{note}"
    record = {**choice.to_dict(), "reason": reason, "message": message}
    trainer.events.emit(ev.Alert(step=trainer.step, kind="batch_size", severity="info", suggest="", message=message,
                                 **{k: v for k, v in record.items() if k != "message"}))
    trainer.message = message
    trainer.write_status()
    return record


def reason_to_run(trainer: Any) -> str | None:
    setting = trainer.spec.train.find_batch
    if setting == "off" or trainer.resume or getattr(trainer, "world", 1) > 1:
        return None
    if setting == "on":
        return "train.find_batch = on"
    device = trainer.accelerator.device
    if device.type != "cuda":
        return None
    available = cuda_available_bytes(device)
    est = estimate_for(trainer, trainer.batch_size, available)
    if est is None:
        return "train.find_batch = auto, and no memory estimate for this setup"
    v = est.gpus[0]
    if v.verdict == "fits":
        return None
    how = "tight" if v.verdict == "tight" else "over"
    return f"train.find_batch = auto: the estimate of {gib(v.needed_bytes)} is {how} for the {gib(available)} this " \
           "process can use"


def probe_step(trainer: Any, micro_batch: int, extra_bytes: int = 0) -> int | None:
    """One forward and backward at `micro_batch`, no optimizer step; the bytes a training step would need
    (CUDA: the measured peak plus the optimizer states not allocated yet), None where nothing is measured."""
    import torch

    acc, prep = trainer.accelerator, trainer.prep
    cuda = acc.device.type == "cuda"
    trainer._progress(f"finding the micro-batch that fits: trying {micro_batch}")
    if cuda:
        torch.cuda.reset_peak_memory_stats(acc.device)
    try:
        batch = prep.data.train_batch(trainer.epoch, trainer.position, micro_batch).to(acc.device)
        with acc.autocast():
            loss = trainer.technique.loss(prep, batch)
            acc.backward(loss / trainer.grad_accum)
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(acc.device)
        return int(torch.cuda.max_memory_allocated(acc.device)) + extra_bytes
    return None


def cuda_available_bytes(device: Any) -> int:
    """What this process can have: the device's free memory plus what torch's allocator already holds."""
    import torch

    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device))


def optimizer_state_bytes(trainer: Any) -> int:
    """The optimizer states the first step allocates (0 once they exist: then the peak counts them)."""
    opt = step_guard.inner(trainer.optimizer)
    if any(opt.state.values()):
        return 0
    params = [p for p in trainer.params if p.requires_grad]
    kind = trainer.spec.train.optimizer
    if kind in ("adamw8bit", "paged_adamw8bit"):
        return sum(2 * p.numel() for p in params)  # two 8-bit states
    per_param = 1 if kind == "sgd" else 2  # SGD momentum; AdamW's two moments, in the parameter's dtype
    return sum(per_param * p.numel() * p.element_size() for p in params)


def estimate_for(trainer: Any, micro_batch: int, available: int | None, suggestions: bool = False) -> Any:
    """The estimator's Estimate for this run at `micro_batch`, or None when it cannot model the setup:
    the estimate only advises (whether to probe, the numbers of a no-fit report), so it never fails a run."""
    from engine.estimate.memory import estimate
    from engine.estimate.request import request_from_spec

    spec = trainer.spec
    config = getattr(trainer.prep.model, "config", None)
    try:  # this device's share: one process, the micro-batch probed, the effective batch kept
        built = {"vocab_size": config.vocab_size} if spec.technique == "scratch" and config is not None else {}
        req = request_from_spec(spec, batch_size=micro_batch, gpus=1, strategy="ddp",
                                grad_accum=max(1, trainer.batch_size * trainer.grad_accum // micro_batch), **built)
        gpus = [(0, "this device", available if available is not None else 2**62)]
        return estimate(req, gpus=gpus, with_suggestions=suggestions)
    except Exception:  # noqa: BLE001 - see the docstring: no estimate is an answer, not a failure
        return None


def no_fit_numbers(trainer: Any, available: int | None) -> dict[str, str]:
    est = estimate_for(trainer, 1, available)
    numbers: dict[str, str] = {}
    if est is not None:
        numbers["estimated tensors of a step at micro-batch 1"] = gib(est.peak_bytes)
        numbers["with the CUDA context and the allocator's margin"] = gib(est.total_bytes)
    if available is not None:
        numbers["this process can use"] = f"{gib(available)}, {MARGIN:.0%} of it with the margin"
    return numbers


def no_fit_options(trainer: Any, available: int | None) -> list[str]:
    """What uses less memory, for this run: the estimator's own suggestions (with their numbers) first."""
    spec, t = trainer.spec, trainer.spec.train
    options: list[str] = []
    est = estimate_for(trainer, 1, available, suggestions=available is not None)
    for s in (est.suggestions if est is not None else [])[:4]:
        options.append(f"{s.change} (estimated {gib(s.total_bytes)}, {s.verdict})")
    if spec.technique in ("full", "moe", "distill"):
        options.append("LoRA or QLoRA instead of training every weight (technique = \"lora\" or \"qlora\")")
    elif spec.technique == "lora":
        options.append("QLoRA: a 4-bit base under the adapters (technique = \"qlora\")")
    if not t.gradient_checkpointing:
        options.append("train.gradient_checkpointing = true")
    if t.precision == "fp32":
        options.append("train.precision = \"bf16\"")
    options.append(f"a shorter train.seq_len (now {t.seq_len})")
    options.append("more GPUs: distributed.num_processes with strategy = \"fsdp\" (shards weights, gradients "
                   "and optimizer states)")
    if spec.technique == "scratch":
        options.append(f"a smaller model.size (now {spec.model.size})")
    return options


def back_off(trainer: Any, at: tuple[int, int]) -> None:
    """RELIABILITY O2: out of memory in a step halves the micro-batch and doubles the accumulation (the same
    effective batch), then the same samples are trained again, from `at`, in the smaller pieces."""
    import torch

    trainer.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer.batch_size, trainer.grad_accum = trainer.batch_size // 2, trainer.grad_accum * 2
    trainer.epoch, trainer.position = at
    trainer.events.emit(ev.Alert(step=trainer.step, **oom_alert(trainer.batch_size, trainer.grad_accum, True).fields()))
