"""One DPO or ORPO micro-batch for tests/support/memory_measure.py: the reference module and the loss, as
engine/techniques/dpo.py and orpo.py compute them, on a model the measurement built."""

from __future__ import annotations

from typing import Any

from engine.estimate.memory import EstimateRequest


def reference_module(req: EstimateRequest, model: Any) -> Any | None:
    """DPO's reference module: the frozen copy as engine/techniques/dpo.py makes it (the compute dtype), or for
    the adapter switched off, the same model over the same tensors; None when precomputed (or ORPO)."""
    import copy

    import torch

    kind = req.reference_kind()
    if kind == "adapter":  # the same weights (shared, not copied): MemTracker takes one forward a module a step
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        return copy.deepcopy(model, memo=shared)
    if kind != "copy":
        return None
    dtype = torch.float32 if req.precision == "fp32" else torch.bfloat16
    return copy.deepcopy(model).to(dtype).eval().requires_grad_(False)


def preference_loss(req: EstimateRequest, model: Any, reference: Any | None, ids: Any) -> Any:
    """One DPO or ORPO micro-batch as engine/techniques/dpo.py and orpo.py compute it: `ids` holds the B chosen
    rows then the B rejected ones (seq_len + 1 tokens each), every target an answer token; DPO's reference runs
    first, without gradients (the adapter switched off, or the frozen copy)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from engine.techniques import orpo, pairs

    keep = torch.ones_like(ids, dtype=torch.bool)
    n = ids.size(0) // 2
    if req.technique == "orpo":
        nll = pairs.token_terms(model, ids, keep)
        mean = -nll.mean(-1)
        log_odds = (mean[:n] - mean[n:]) - (orpo.log1mexp(mean[:n]) - orpo.log1mexp(mean[n:]))
        return nll[:n].mean() - 0.1 * F.logsigmoid(log_odds).mean()
    kind = req.reference_kind()
    with torch.no_grad():
        if kind == "copy":
            ref = pairs.answer_logps(reference, ids, keep)
        elif kind == "adapter":
            with reference.disable_adapter() if hasattr(reference, "disable_adapter") else contextlib.nullcontext():
                ref = pairs.answer_logps(reference, ids, keep)
        else:  # precomputed: read from a table
            ref = torch.zeros(ids.size(0))
    logps = pairs.answer_logps(model, ids, keep)
    delta = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
    return -F.logsigmoid(0.1 * delta).mean()
