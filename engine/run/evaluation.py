"""What an evaluation decides beyond its loss: the best so far, early stopping, and sample generations.

`BestEval` follows the lowest eval loss and how many evaluations have passed since it (its state goes into
checkpoints, so a resume or a rollback counts on from there). `eval.patience` evaluations in a row without a
lower loss end the run early, as done (final/ written); `checkpoint.final = "best"` saves a checkpoint at every
evaluation that improves, so the best weights exist to become final/ (engine/run/checkpointing.py).

`samples` generates greedily from each of `eval.prompts` at an evaluation: through the tokenizer's chat
template when the run trains conversations (the "model ready" event's data report names a template), as plain
text otherwise. A model that cannot generate switches samples off with one alert; training goes on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BestEval:
    loss: float | None = None
    step: int | None = None
    since: int = 0  # evaluations since the best one

    def see(self, step: int, loss: float) -> bool:
        """Count one evaluation; True when it is the best so far."""
        if self.loss is None or loss < self.loss:
            self.loss, self.step, self.since = loss, step, 0
            return True
        self.since += 1
        return False

    def exhausted(self, patience: int) -> bool:
        return bool(patience) and self.since >= patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> BestEval:
        return cls(**state) if isinstance(state, dict) else cls()


def chat_run(data_summary: dict[str, Any] | None) -> bool:
    """Whether the run trains conversations through a chat template (as engine/serve/generate.py reads it)."""
    return bool(data_summary and data_summary.get("template"))


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def samples(model: Any, tokenizer: Any, prompts: list[str], *, chat: bool, max_new_tokens: int,
            device: Any) -> list[dict[str, str]]:
    """[{"prompt", "text"}]: each prompt's greedy continuation (the reply, for a chat run)."""
    import torch

    from engine.data.chat_templates import END_OF_TURN

    config = getattr(model, "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024
    vocab = tokenizer.get_vocab()
    stops = [tokenizer.eos_token_id, *sorted({vocab[t] for t in END_OF_TURN.values() if t in vocab})]
    stops = [s for s in stops if s is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    out = []
    was_training = model.training
    model.eval()
    try:
        for prompt in prompts:
            ids = prompt_ids(tokenizer, prompt, chat) or [pad]
            ids = ids[-max(1, limit - max_new_tokens):]
            x = torch.tensor([ids], device=device)
            with torch.no_grad():
                y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                   max_new_tokens=max(1, min(max_new_tokens, limit - len(ids))),
                                   pad_token_id=pad, eos_token_id=stops or None)
            new = (y[0] if getattr(config, "is_encoder_decoder", False) else y[0, x.shape[1]:]).tolist()
            out.append({"prompt": prompt, "text": tokenizer.decode(new, skip_special_tokens=True)})
    finally:
        model.train(was_training)
    return out


def eval_samples(trainer: Any) -> list[dict[str, str]] | None:
    """eval.prompts' generations at this evaluation (one process only: a sharded model generates on every rank
    together, which this does not do); None without prompts, or once generating has failed."""
    from engine.runfolder import events as ev

    prompts = trainer.spec.eval.prompts
    if not prompts or trainer.ranks.world > 1 or getattr(trainer, "samples_off", False):
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    try:
        return samples(model, trainer.prep.tokenizer, prompts, chat=chat_run(_data_summary(trainer)),
                       max_new_tokens=trainer.spec.eval.sample_tokens, device=trainer.accelerator.device)
    except Exception as e:  # noqa: BLE001 - a sample is a nicety: it never ends the run
        trainer.samples_off = True
        trainer.events.emit(ev.Alert(step=trainer.step, kind="samples", severity="warning", suggest=None,
                                     message=f"eval.prompts: this model could not generate ({type(e).__name__}: "
                                             f"{str(e)[:200]}); samples are off for the rest of the run"))
        return None


def _data_summary(trainer: Any) -> dict[str, Any] | None:
    report = getattr(trainer.prep.data, "report", None)
    return report.summary() if report is not None and hasattr(report, "summary") else None


def decide(trainer: Any, improved: bool) -> None:
    """After an evaluation: save the best weights (checkpoint.final = "best"), stop once patience runs out."""
    from engine.runfolder import events as ev

    spec, best = trainer.spec, trainer.best_eval
    if improved and spec.checkpoint.final == "best":
        trainer.save_checkpoint(reason="best")
    if best.exhausted(spec.eval.patience) and not trainer.early_stop:
        trainer.early_stop = (f"stopped early: eval loss has not improved for {best.since} evaluations (best "
                              f"{best.loss:.4f} at step {best.step})")
        trainer.events.emit(ev.Alert(step=trainer.step, kind="early_stop", severity="info", suggest=None,
                                     message=trainer.early_stop))
