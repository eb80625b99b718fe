"""Will it fit? The memory of a training run, from the config and the options, by arithmetic.

`estimate(request)` returns an `Estimate`: the book's rule of thumb, a breakdown (weights per dtype,
gradients, optimizer states, autocast copies, activations, logits and loss, a teacher), the peak
tensor total of one step (phase-aware: the forward/backward peak and the optimizer-step peak are
different moments; the larger one counts), the total with the allocator's and CUDA's margins, a
verdict per GPU and the changes that would make it fit. No weights are loaded. A scratch shape (GPT-2, Llama)
is arithmetic and never imports torch: a 7B Llama answers in milliseconds. A model given by its config has its
activations measured once on a reduced copy under FakeTensorMode (engine/estimate/probe.py: seconds, cached
per config, precision and what trains); until then, and where the model cannot be built, the per-layer
formulas answer. `Estimate.sources` says which part came from where. The accuracy of `peak_bytes` is measured
against MemTracker in tests/unit/test_estimate_accuracy.py and bench/estimate_accuracy.py.

This module is the estimator's face: the request and result types are engine/estimate/request.py's, the
arithmetic engine/estimate/breakdown.py's, the suggestions engine/estimate/suggest.py's (which estimate
each change through the breakdown, never through this module).
"""

from __future__ import annotations

from collections.abc import Callable

# Re-exported: callers read the estimator's types and constants from here.
from engine.estimate.breakdown import (  # noqa: F401
    CUDA_CONTEXT_BYTES, FRAGMENTATION_MARGIN, TIGHT_MARGIN, breakdown, peak, rule_of_thumb, total_for, verdict)
from engine.estimate.params import NF4_BITS, ParamBytes, bytes_for, parameters, trainable  # noqa: F401
from engine.estimate.request import (  # noqa: F401
    ATTENTIONS, OPTIMIZERS, PRECISIONS, STRATEGIES, TECHNIQUES, Breakdown, Estimate, EstimateRequest, GpuVerdict,
    ModelSummary, Phase, RuleOfThumb, Suggestion)
from engine.estimate.suggest import suggestions
from engine.models.shape import ModelDims


def estimate(req: EstimateRequest, *, gpus: list[tuple[int, str, int]] | None = None,
             dims: ModelDims | None = None, with_suggestions: bool = True,
             progress: Callable[[int, int], None] | None = None, measure: bool = True,
             note: Callable[[str], None] | None = None) -> Estimate:
    """The full estimate. `gpus` is [(index, name, free bytes)]; None probes this machine.
    `progress(done_bytes, total_bytes)` is called while the dataset's tokens are counted.
    `measure`: measure the activations of an architecture without a per-layer formula on a reduced copy when
    no cache has them yet (seconds, once; `note(text)` says so); False answers from the cache or the formulas
    at once (`measurable(est)` then says whether a measured answer would differ)."""
    d = dims or req.dims()
    if measure and d.measurable:
        ensure_measured(req, d, note)
    if gpus is None:
        gpus = probe_gpus(req)
    est = breakdown(req, gpus, d)
    if with_suggestions and est.gpus and any(v.verdict != "fits" for v in est.gpus):
        est.suggestions = suggestions(req, d, est, gpus, measure=measure)
    if req.dataset:
        from engine.estimate.data_size import check_data, source_for

        source = source_for(req.dataset, req.text_column, **dict(req.data_options))
        est.data = check_data(req.dataset, technique=req.technique, params=d.params,
                              model=req.tokenizer or req.model,
                              tokens_per_step=req.tokens_per_step(est.gpu_count), text_column=req.text_column,
                              max_steps=req.max_steps, progress=progress, source=source, seq_len=req.seq_len)
        if est.data.method.startswith("no tokenizer"):
            est.notes.append("tokens estimated from bytes: no tokenizer for this model "
                             "(scratch trains one on the data)")
    return est


def _inner(req: EstimateRequest) -> EstimateRequest:
    from dataclasses import replace

    return replace(req, technique=req.finetuning) if req.preference else req


def ensure_measured(req: EstimateRequest, d: ModelDims, note: Callable[[str], None] | None = None) -> None:
    """Measure (once, cached) the activation profile this request's estimate reads."""
    from engine.estimate import probe

    inner = _inner(req)
    probe.ensure(d, probe.variant(inner, trainable(inner, d)), note)


def measurable(req: EstimateRequest, est: Estimate) -> bool:
    """True when `est` answered with formulas where a measurement of the model could answer."""
    from engine.estimate import probe

    d = req.dims()
    if not d.measurable or not est.breakdown.activations_source.startswith("formula"):
        return False
    inner = _inner(req)
    return not probe.known(d, probe.variant(inner, trainable(inner, d)))


def probe_gpus(req: EstimateRequest) -> list[tuple[int, str, int]]:
    """(index, name, free bytes) of this machine's GPUs; --gpus N repeats the first one N times."""
    from engine.machine.probe import probe_gpus as nvml_gpus

    found, _, _, _ = nvml_gpus()
    listed = [(g.index, g.name, g.memory_free_bytes) for g in found]
    if req.gpus and listed:
        first = listed[0]
        listed = [(i, first[1], first[2]) for i in range(req.gpus)] if req.gpus > len(listed) else listed[: req.gpus]
    return listed
