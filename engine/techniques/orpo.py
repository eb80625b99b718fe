"""ORPO, odds-ratio preference optimization (Hong et al. 2024): preference tuning without a reference model.

Supervised learning on the chosen answer plus a term that raises the odds of the chosen answer against the
rejected one. With P(y|x) = exp(mean log-probability of the answer's tokens) and odds(y) = P / (1 - P):

    log_odds = log odds(y_w) - log odds(y_l)
    loss     = NLL(y_w | x) - beta * mean(log sigmoid(log_odds))
    reward(y) = beta * mean log-probability of y's tokens            (for the metrics, as TRL logs them)

No reference model: the memory of SFT on twice the sequences. `options.nll_on` chooses the NLL's tokens:
"answer" (default: the chosen answer's tokens, the paper's L_SFT and this project's masking everywhere) or
"all" (every token of prompt + chosen answer, what TRL's ORPOTrainer computes; tests/engine/
test_preference_parity.py checks one step's loss and gradients against it in that mode). Metrics as DPO's
plus pref/nll and pref/log_odds. Options: beta (0.1), nll_on, finetuning (lora | qlora | full) and LoRA's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques import pairs
from engine.techniques.base import Prepared, SetupContext

DEFAULTS: dict[str, Any] = {"beta": 0.1, "nll_on": "answer"}
NLL_ON = ("answer", "all")
MORE = ("pref/nll", "pref/log_odds")

save, load_inference = pairs.save, pairs.load_inference


def options(spec: Any) -> tuple[dict[str, Any], Any]:
    opts, view = pairs.split_options(spec, "orpo", DEFAULTS)
    if opts["nll_on"] not in NLL_ON:
        raise UserError(f"options.nll_on: {opts['nll_on']!r} is not one of {', '.join(NLL_ON)}", field="options.nll_on")
    return opts, view


def preflight(spec: Any) -> None:
    options(spec)
    pairs.preflight(spec, "orpo", DEFAULTS)


def setup(ctx: SetupContext) -> Prepared:
    opts, view = options(ctx.spec)
    prep = pairs.setup(ctx, "orpo", opts, view)
    prep.extra |= {"beta": float(opts["beta"]), "nll_on": opts["nll_on"]}
    return prep


def log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2 (Maechler 2012)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def loss(prep: Prepared, batch: Any) -> Any:
    import torch.nn.functional as F

    from engine.data.preference import split_pairs

    ids, answer, real, _ = split_pairs(batch)
    n = batch.size(0)
    everything = prep.extra["nll_on"] == "all"
    nll = pairs.token_terms(prep.model, ids, real if everything else answer)  # one forward for both terms
    on_answer = answer[:, 1:].float()
    mean_logps = -(nll * on_answer).sum(-1) / on_answer.sum(-1).clamp(min=1)
    sft_mask = (real if everything else answer)[:n, 1:].float()
    sft = (nll[:n] * sft_mask).sum() / sft_mask.sum().clamp(min=1)
    chosen, rejected = mean_logps[:n], mean_logps[n:]
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    beta = prep.extra["beta"]
    pairs.record(prep, beta * chosen, beta * rejected, sft, log_odds.mean())
    return sft - beta * F.logsigmoid(log_odds).mean()


def load(prep: Prepared, folder: Path) -> None:
    pairs.load(prep, folder)


def metrics(prep: Prepared) -> dict[str, float]:
    return pairs.metrics(prep, MORE)
