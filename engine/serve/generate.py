"""Sample text from a run: its final model, or a checkpoint (the newest on the active branch by default).

Checkpoints hold weights only; the model's config and tokenizer are saved once per run in
<run>/model/ when training starts. A technique whose checkpoints need more (an adapter on a base
model) provides `load_inference(run, folder) -> (model, tokenizer)` in its module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.checkpoints import store as checkpoint

from engine.runfolder import folder as runfolder
from engine.errors import UserError

MODEL_DIR = "model"


def load_for_inference(run: Path, checkpoint_ref: str | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer, a description of the source)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from engine import spec as spec_mod
    from engine.techniques.base import get

    if (run / runfolder.SPEC).is_file() and hasattr(get(spec_mod.load(run / runfolder.SPEC).technique), "remote"):
        raise UserError(f"run {run.name} fine-tuned a hosted model (it lives with the service): "
                        f"`llm-wizard chat {run.name}` talks to it through the API", field="run")
    folder, name, notes = checkpoint.pick_model(run, checkpoint_ref)  # verified; what was passed over is said
    source = name + (f" ({'; '.join(notes)})" if notes else "")
    final = folder
    if name == checkpoint.FINAL:
        _refuse_model_code(run, final)
        if (final / "adapter_config.json").is_file():  # a peft adapter: the technique puts it on its base
            technique = get(spec_mod.load(run / runfolder.SPEC).technique)
            model, tokenizer = technique.load_inference(run, final)
            return model.eval(), tokenizer, "final"
        if (final / "config.json").is_file() and AutoConfig.from_pretrained(final).is_encoder_decoder:
            from transformers import AutoModelForSeq2SeqLM  # an encoder-decoder (MoE's Switch Transformers)

            return AutoModelForSeq2SeqLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final), "final"
        return AutoModelForCausalLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final), "final"
    technique = get(spec_mod.load(run / runfolder.SPEC).technique)
    if hasattr(technique, "load_inference"):
        model, tokenizer = technique.load_inference(run, folder)
        return model.eval(), tokenizer, source
    from safetensors.torch import load_model

    from engine.checkpoints import fsdp as sharded_checkpoint

    base = run / MODEL_DIR
    if not (base / "config.json").is_file():
        raise UserError(f"run {run.name} has no {MODEL_DIR}/config.json to rebuild the model from", field="run")
    _refuse_model_code(run, base)
    if sharded_checkpoint.is_sharded_checkpoint(folder):  # FSDP or ZeRO: gather its shards in this process
        import tempfile

        from engine.checkpoints import zero as zero_checkpoint

        sharded = zero_checkpoint if zero_checkpoint.is_zero_checkpoint(folder) else sharded_checkpoint
        with tempfile.TemporaryDirectory(prefix="llmw-consolidate-") as tmp:
            whole = sharded.consolidate_offline(folder, base, Path(tmp) / "model")
            model = AutoModelForCausalLM.from_pretrained(whole)
        return model.eval(), AutoTokenizer.from_pretrained(base), source
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))  # the vocabulary as trained
    load_model(model, str(folder / "model.safetensors"), strict=True)
    return model.eval(), AutoTokenizer.from_pretrained(base), source


def _refuse_model_code(run: Path, folder: Path) -> None:
    """A model saved with its own code (a pinned remote-code base copies it into the run) is not loaded here:
    generate never runs a model's Python files (RELIABILITY M3), and says so instead of transformers' prompt."""
    from engine.models import trust as security

    source = security.resolve(str(folder))
    code = security.remote_code(source) if source is not None else None
    if code is not None:
        raise UserError(f"{folder.relative_to(run)}/ of run {run.name} needs its own model code "
                        f"({', '.join(code.files)}); generate never runs a model's code: after reading those "
                        "files, load the folder with transformers and trust_remote_code=True yourself", field="run")


def trained_on_chat(run: Path) -> bool:
    """Whether the run trained conversations through a chat template (its "model ready" event says)."""
    from engine.runfolder import events as ev

    for event in ev.read(run):
        if isinstance(event, ev.State) and event.data is not None:
            return bool(event.data.get("template"))
    return False


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> Any:
    """The prompt's ids: as the user's turn of a conversation, the reply to come (chat), else as plain text."""
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer(rendered, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]


def stop_ids(tokenizer: Any) -> list[int]:
    """eos, and the end-of-turn tokens of the chat layouts the tokenizer holds (a reply ends there)."""
    from engine.data.chat_templates import END_OF_TURN

    vocab = tokenizer.get_vocab()
    return [tokenizer.eos_token_id, *sorted({vocab[t] for t in END_OF_TURN.values() if t in vocab}
                                            - {tokenizer.eos_token_id})]


def generate(run: Path, prompt: str, *, checkpoint_ref: str | None = None, max_new_tokens: int = 100,
             temperature: float = 0.8, top_k: int = 50, seed: int = 0, chat: bool | None = None) -> tuple[str, str]:
    """(the continuation of `prompt`, or the reply to it for a run trained on conversations, and its source).
    `chat`: None = as the run trained, False = the prompt as plain text."""
    import torch

    if max_new_tokens < 1:
        raise UserError("max_new_tokens must be at least 1", field="max_new_tokens")
    model, tokenizer, source = load_for_inference(run, checkpoint_ref)
    torch.manual_seed(seed)
    ids = prompt_ids(tokenizer, prompt, trained_on_chat(run) if chat is None else chat)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]])
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    ids = ids[:, -max(1, limit - max_new_tokens):]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=min(max_new_tokens, limit - 1),
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_k=top_k if temperature > 0 else None, pad_token_id=tokenizer.eos_token_id,
                             eos_token_id=stop_ids(tokenizer))
    new = out[0] if model.config.is_encoder_decoder else out[0, ids.shape[1]:]  # a decoder's output is all new
    return tokenizer.decode(new, skip_special_tokens=True), source
