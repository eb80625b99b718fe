"""Which multi-process strategies this machine can train: DeepSpeed installed, CUDA present.

Asked by the launcher before any process starts (engine/run/distributed/launch.py `check_supported`), by the
estimator's layout proposal (engine/estimate/layout.py) and by the wizard, which shows the reason beside a
choice it disables. The strategy names are engine.vocabulary's. Nothing heavy is imported.
"""

from __future__ import annotations

from engine.vocabulary import STRATEGIES, names

# Strategies this version trains. fsdp (FSDP2: engine/checkpoints/fsdp.py saves its shards and consolidates
# final/) needs CUDA GPUs: accelerate runs FSDP only on an accelerator. zero2/zero3 (DeepSpeed,
# engine/checkpoints/zero.py) need the deepspeed package (the optional extra llm-wizard[deepspeed]); they run
# on CUDA GPUs and, over gloo, on the CPU.
TRAINABLE_STRATEGIES = names(STRATEGIES, trained=True)
GPU_ONLY_STRATEGIES = ("fsdp",)
DEEPSPEED_STRATEGIES = ("zero2", "zero3")


def zero_available() -> bool:
    """Whether DeepSpeed can be imported here (ZeRO-2/3 need it); found without importing it."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def deepspeed_missing(strategy: str) -> str | None:
    """Why `strategy` cannot run here (the deepspeed package is not importable), or None."""
    if strategy not in DEEPSPEED_STRATEGIES or zero_available():
        return None
    return (f"{strategy} needs DeepSpeed, which is not installed in this Python environment "
            "(pip install 'llm-wizard[deepspeed]'); without it use fsdp to shard the model over CUDA GPUs, or ddp, "
            "which keeps a full copy on each GPU (the estimate shows whether that fits)")


def strategy_unavailable(strategy: str, *, cuda: bool) -> str | None:
    """Why this machine cannot train `strategy` now, in a few words (None: it can): what the wizard shows
    beside a disabled choice. The same rules as the launcher's check_supported."""
    if strategy in DEEPSPEED_STRATEGIES and not zero_available():
        return "DeepSpeed is not installed"
    # The wizard shards over CUDA GPUs only: ZeRO also runs over gloo on the CPU (check_supported lets a spec
    # ask for it, the tests use it), but sharding a model that does not fit a GPU into CPU processes is no plan.
    if (strategy in GPU_ONLY_STRATEGIES or strategy in DEEPSPEED_STRATEGIES) and not cuda:
        return "no CUDA"
    return None
