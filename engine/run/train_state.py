"""Pieces of a run's state that are not the loop: the optimizer, pure bf16's parameter dtype, seeding, and
the RNG state saved in checkpoints (as tensors and plain lists, so `torch.load(weights_only=True)` reads it
back)."""

from __future__ import annotations

import random
from typing import Any

from engine import vocabulary


def build_optimizer(groups: list[dict[str, Any]], t: Any) -> Any:
    import torch

    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9)
    if t.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=t.lr, betas=(0.9, 0.95))
    if t.optimizer == "paged_adamw8bit":  # states page out to the CPU under GPU memory pressure (QLoRA)
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups, lr=t.lr, betas=(0.9, 0.95))
    # fused: one kernel for all parameters (also the fastest on the CPU), and it can skip a non-finite
    # step on the device without a sync (engine/run/step_guard.py)
    fused = all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, 0.95), fused=fused or None)


def to_weight_dtype(model: Any, precision: str) -> int:
    """Pure bf16 (`bf16-pure`): every floating parameter in bf16, trainable or frozen (peft keeps adapters and
    prompt tuning's virtual tokens in fp32, from_pretrained a base in fp32), so that gradients and the
    optimizer's states, made like their parameters, are bf16 too. In place (`.data`), so the parameter
    objects the technique put in its param groups stay the ones the model uses. Buffers (RoPE's inv_freq)
    keep their dtype: models compute them in fp32 and cast the result. Other precisions: untouched.
    Returns how many parameters changed dtype."""
    import torch

    if vocabulary.precision(precision).weights != "bf16":
        return 0
    changed = 0
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
            changed += 1
    return changed


def seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG as tensors and plain lists, so torch.load(weights_only=True) can read it back."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [random.getstate()[0], list(random.getstate()[1])],
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), None))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
