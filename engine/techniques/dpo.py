"""Direct preference optimization (book 5.3.3, figure 5.6): RLHF's reward model and PPO replaced by a loss.

For a pair (prompt x, chosen answer y_w, rejected answer y_l), with log pi(y|x) the summed log-probability
of the answer's tokens under the model being tuned and log ref(y|x) under the reference (the model before
tuning):

    reward(y) = beta * (log pi(y|x) - log ref(y|x))
    loss      = -log sigmoid(reward(y_w) - reward(y_l))         (the mean over the micro-batch's pairs)

Rafailov et al. 2023, TRL's DPOTrainer `loss_type = "sigmoid"` (tests/engine/test_preference_parity.py
checks one step's loss and gradients against it). The live metrics are the rewards of the chosen and
rejected answers, their margin and the share of pairs whose chosen answer has the larger reward
(engine/techniques/pairs.py).

The reference (`options.reference`), never a second copy where it can be avoided:
- "adapter" (LoRA/QLoRA, their "auto"): the same model with the adapter disabled is the frozen base;
- "precomputed": every pair's reference log-probs computed once, by the model before its first step, and
  stored in the run folder (reference_logps.safetensors, tied to the data's fingerprint; a resume reads it);
- "copy": a frozen copy of the weights in the compute dtype, run on each micro-batch;
- "auto" for a full fine-tune picks the cheaper: precomputed when the run scores at least as many pairs as
  the data holds (one pass over the data costs no more than a copy's pass on every batch) or when the copy
  does not fit beside the run in the GPU's free memory (engine/estimate), else the copy; the choice and
  why are said in the run's "model ready" event and status. A resume keeps the choice (the stored file, or
  a copy of the pretrained weights when there is none); an explicit "precomputed" whose file is lost is
  refused on resume rather than recomputed from trained weights.
Options: beta (0.1), reference (auto), finetuning (lora | qlora | full) and LoRA's (pairs.py).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques import pairs
from engine.techniques.base import Prepared, SetupContext

DEFAULTS: dict[str, Any] = {"beta": 0.1, "reference": "auto"}
REFERENCES = ("auto", "adapter", "copy", "precomputed")
REFERENCE_FILE = "reference_logps.safetensors"
REFERENCE_BATCH = 8  # pairs a forward while precomputing

save, load_inference = pairs.save, pairs.load_inference


def options(spec: Any) -> tuple[dict[str, Any], Any]:
    opts, view = pairs.split_options(spec, "dpo", DEFAULTS)
    ref, finetuning = opts["reference"], opts["finetuning"]
    if ref not in REFERENCES:
        raise UserError(f"options.reference: {ref!r} is not one of {', '.join(REFERENCES)}", field="options.reference")
    if ref == "adapter" and finetuning == "full":
        raise UserError("options.reference: \"adapter\" needs finetuning = \"lora\" or \"qlora\" (the base with the "
                        "adapter disabled); a full fine-tune takes \"copy\" or \"precomputed\"",
                        field="options.reference")
    if ref == "copy" and finetuning != "full":
        raise UserError("options.reference: under LoRA the reference is the base with the adapter disabled, no copy "
                        "needed; use \"adapter\" (or \"precomputed\")", field="options.reference")
    return opts, view


def preflight(spec: Any) -> None:
    options(spec)
    pairs.preflight(spec, "dpo", DEFAULTS)


def setup(ctx: SetupContext) -> Prepared:
    opts, view = options(ctx.spec)
    prep = pairs.setup(ctx, "dpo", opts, view)
    mode, why, table = opts["reference"], "as options.reference asks", None
    if mode in ("auto", "precomputed"):
        table = _read_table(ctx.run / REFERENCE_FILE, prep.data_fingerprint)
    if mode == "auto" and opts["finetuning"] != "full":
        mode, why = "adapter", "the base with the adapter disabled (no second copy)"
    elif mode == "auto" and table is not None:  # a resumed run: its reference as it was computed
        mode, why = "precomputed", f"read from {REFERENCE_FILE} in the run folder"
    elif mode == "auto" and any((ctx.run / "checkpoints").glob("step-*")):
        # A resumed run without the file: its reference was a copy (or the file is lost); the weights loaded
        # now are the pretrained ones, so a copy of them is the reference either way (never the trained ones).
        mode, why = "copy", f"a frozen copy of the pretrained weights (this resumed run has no {REFERENCE_FILE})"
    elif mode == "auto":
        mode, why = choose_reference(ctx.spec, prep)
    prep.extra |= {"beta": float(opts["beta"]), "reference": mode, "ref_model": None, "ref_table": table}
    if mode == "copy":
        import torch

        from engine.techniques.lora import base_dtype

        dtype = base_dtype(ctx.spec) if ctx.spec.train.precision != "fp32" else torch.float32
        prep.extra["ref_model"] = copy.deepcopy(prep.model).to(dtype).eval().requires_grad_(False)
    text = f"reference model: {mode}, {why}"
    ctx.progress(text)
    pairs.note(prep, text)
    return prep


def choose_reference(spec: Any, prep: Prepared) -> tuple[str, str]:
    """("precomputed" | "copy", why) for a full fine-tune: see the module docstring."""
    import torch

    data, t = prep.data, spec.train
    per_step = t.batch_size * t.grad_accum * spec.distributed.num_processes
    steps = t.max_steps or max(1, math.ceil(t.epochs * max(1, data.n_train_blocks // per_step)))
    scored, held = steps * per_step, data.n_train_blocks + data.n_val_blocks
    params = list(prep.model.parameters())
    elem = 4 if t.precision == "fp32" else 2
    copy_bytes = sum(p.numel() for p in params) * elem
    gib = copy_bytes / 2**30
    if torch.cuda.is_available():
        fits = _copy_fits(spec, copy_bytes)
        if not fits:
            return "precomputed", (f"a copy ({gib:.2f} GiB) would not fit beside the run in this GPU's free memory; "
                                   f"one pass over the {held} pairs before training, stored in {REFERENCE_FILE}")
    if scored >= held:
        return "precomputed", (f"one pass over the {held} pairs before training (the run scores {scored}: a frozen "
                               f"copy, {gib:.2f} GiB more, would run on every batch); stored in {REFERENCE_FILE}")
    return "copy", (f"a frozen copy ({gib:.2f} GiB): the run scores {scored} pairs, fewer than the {held} a "
                    "precomputation would")


def _copy_fits(spec: Any, copy_bytes: int) -> bool:
    import torch

    from engine.estimate.memory import estimate
    from engine.estimate.request import request_from_spec

    try:
        free = torch.cuda.mem_get_info()[0]
        est = estimate(request_from_spec(spec, gpus=1, strategy="ddp"), gpus=[(0, "this GPU", free)],
                       with_suggestions=False)
    except (UserError, RuntimeError, OSError, ValueError):
        return True  # no estimate for this setup: the passes decide
    return est.total_bytes + copy_bytes <= free


def loss(prep: Prepared, batch: Any) -> Any:
    import torch.nn.functional as F

    chosen, rejected = rewards(prep, batch)
    pairs.record(prep, chosen, rejected)
    return -F.logsigmoid(chosen - rejected).mean()


def rewards(prep: Prepared, batch: Any) -> tuple[Any, Any]:
    """((B,), (B,)) the implicit rewards beta * (log pi - log ref) of the chosen and the rejected answers."""
    from engine.data.preference import split_pairs

    ids, answer, _, pair = split_pairs(batch)
    # The reference first: its pass without gradients then holds nothing beside the tuned model's saved
    # activations (the estimator counts the step's peak so).
    ref = reference_logps(prep, ids, answer, pair)
    logps = pairs.answer_logps(prep.model, ids, answer)
    n, beta = batch.size(0), prep.extra["beta"]
    return beta * (logps[:n] - ref[:n]), beta * (logps[n:] - ref[n:])


def reference_logps(prep: Prepared, ids: Any, answer: Any, pair: Any) -> Any:
    """(2B,) the reference's answer log-probs, as options.reference chose (no gradient)."""
    import torch

    from engine.models.pretrained import unwrap

    mode = prep.extra["reference"]
    if mode == "precomputed":
        if prep.extra["ref_table"] is None:
            prep.extra["ref_table"] = precompute(prep, ids.device)
        table = prep.extra["ref_table"]
        if table.device != ids.device:
            table = prep.extra["ref_table"] = table.to(ids.device)
        rows = table[pair]
        return torch.cat([rows[:, 0], rows[:, 1]])
    with torch.no_grad():
        if mode == "copy":
            ref = prep.extra["ref_model"]
            if next(ref.parameters()).device != ids.device:
                ref.to(ids.device)  # the trainer moves the tuned model only; the copy follows once
            return pairs.answer_logps(ref, ids, answer)
        model = unwrap(prep.model)
        with model.disable_adapter():
            return pairs.answer_logps(model, ids, answer)


def precompute(prep: Prepared, device: Any) -> Any:
    """Every kept pair's reference log-probs by the model as it is now (before its first step), in eval mode;
    written to the run folder (process 0 of several) so that a resume reads the same numbers."""
    import torch
    from safetensors.torch import save_file

    from engine.data.preference import split_pairs
    from engine.models.pretrained import unwrap

    model, data = unwrap(prep.model), prep.data
    table = torch.full((data.example_file.n_examples // 2, 2), float("nan"), device=device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in data.all_batches(REFERENCE_BATCH):
                ids, answer, _, pair = split_pairs(batch.to(device))
                if prep.extra["finetuning"] != "full":
                    with model.disable_adapter():
                        logps = pairs.answer_logps(model, ids, answer)
                else:
                    logps = pairs.answer_logps(model, ids, answer)
                n = batch.size(0)
                table[pair] = torch.stack([logps[:n], logps[n:]], 1).float()
    finally:
        model.train(training)
    if int(os.environ.get("RANK", "0")) == 0:
        path = Path(prep.extra["run"]) / REFERENCE_FILE
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        save_file({"logps": table.cpu()}, str(tmp), metadata={"data_fingerprint": prep.data_fingerprint})
        os.replace(tmp, path)
    return table


def _read_table(path: Path, fingerprint: str) -> Any:
    """The stored reference log-probs if they belong to this data, else None (computed at the first step)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("data_fingerprint") != fingerprint:
            return None
        return f.get_tensor("logps")


def load(prep: Prepared, folder: Path) -> None:
    """A checkpoint's weights; a precomputed reference must already be in the run folder (else the weights
    loaded now are not the reference any more)."""
    if prep.extra["reference"] == "precomputed" and prep.extra["ref_table"] is None:
        raise UserError(f"{REFERENCE_FILE} is missing from the run folder (or belongs to other data): the reference "
                        "log-probs of the model before training cannot be computed from a checkpoint; start the run "
                        "again, or set options.reference = \"copy\"", field="options.reference")
    pairs.load(prep, folder)


def metrics(prep: Prepared) -> dict[str, float]:
    return pairs.metrics(prep)
