"""Prompt tuning (book 5.3, listing 5.3): a few trainable "virtual token" embeddings before every input.

The pretrained model (spec.model.path) stays frozen, bit for bit; only `num_virtual_tokens` vectors of
the embedding width learn, initialised from the embeddings of `init_text` (peft PromptTuningInit.TEXT)
or at random when it is empty. Data is any source of engine/data/sources.py: plain text (next-token loss on
every token) or, with data.label_column set, labelled rows in the book's format
"<text_column> : <text> Label : <label>" with the loss on the label only (the mask of data_pack.py).

Options: num_virtual_tokens (8), init_text ("" = random init).
Checkpoints hold the virtual-token embeddings only; final/ is a peft adapter folder with the tokenizer,
loaded with `PeftModel.from_pretrained(base, final)`; generate with `use_cache=False` (see load_inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques.base import Prepared, SetupContext, with_defaults
from engine.models.pretrained import load_pretrained, unwrap

WEIGHTS = "prompt.safetensors"
DEFAULTS = {"num_virtual_tokens": 8, "init_text": ""}


def options(spec: Any) -> dict[str, Any]:
    """The technique's options with defaults, validated (UserError names the bad one)."""
    opts = with_defaults(spec, DEFAULTS, "prompt-tuning")
    n = opts["num_virtual_tokens"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise UserError(f"options.num_virtual_tokens: a whole number from 1 to 1024, got {n!r}",
                        field="options.num_virtual_tokens")
    if not isinstance(opts["init_text"], str):
        raise UserError(f"options.init_text: must be text, got {opts['init_text']!r}", field="options.init_text")
    return opts


def preflight(spec: Any) -> None:
    """Before launch (`llm-wizard train`, the wizard): the options, unknown keys refused."""
    options(spec)


def build(spec: Any, base: Any, tokenizer: Any) -> Any:
    """The peft model: `base` frozen, with the virtual tokens in front."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    opts = options(spec)
    init = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    if opts["init_text"]:
        # peft repeats or cuts the text's token embeddings to num_virtual_tokens vectors
        init = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": opts["init_text"],
                "tokenizer_name_or_path": spec.model.path}
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=opts["num_virtual_tokens"], **init)
    return get_peft_model(base, config)


def setup(ctx: SetupContext) -> Prepared:
    import torch

    from engine.data.prepare import source_blocks

    spec = ctx.spec
    opts = options(spec)
    ctx.progress(f"loading {spec.model.path}")
    base, tokenizer = load_pretrained(spec.model.path, "model.path", model=spec.model)
    limit = getattr(base.config, "n_positions", None) or getattr(base.config, "max_position_embeddings", None)
    if limit and spec.train.seq_len + opts["num_virtual_tokens"] > limit:
        raise UserError(f"train.seq_len {spec.train.seq_len} + {opts['num_virtual_tokens']} virtual tokens exceed the "
                        f"model's {limit} positions; lower seq_len", field="train.seq_len")
    # One example a block: peft puts the virtual tokens before each row and takes no position ids, so
    # packed examples would see each other. New template tokens: their rows (the base is frozen) stay
    # at the mean the resize gives them.
    data = source_blocks(ctx, tokenizer, base, packing=False)
    torch.manual_seed(spec.seed)
    model = build(spec, base, tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return Prepared(model=model, tokenizer=tokenizer, data=data.blocks, data_fingerprint=data.fingerprint,
                    param_groups=[{"params": trainable, "weight_decay": 0.0}],
                    extra={"virtual_tokens": opts["num_virtual_tokens"]})


def loss(prep: Prepared, batch: Any) -> Any:
    """Next-token cross-entropy after the virtual tokens, on the trained targets only (data_pack.lm_loss's rule)."""
    import torch.nn.functional as F

    from engine.data.pack import split_batch

    ids, mask, _ = split_batch(batch)  # one example a row: no position ids needed
    logits = prep.model(input_ids=ids[:, :-1], use_cache=False).logits[:, prep.extra["virtual_tokens"]:]  # after
    # the virtual tokens peft prepends; no KV cache while training
    targets = ids[:, 1:] if mask is None else ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100,
                            reduction="sum")
    return total / (targets != -100).sum().clamp(min=1)


def save(prep: Prepared, folder: Path, *, final: bool = False) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    model = unwrap(prep.model)
    if final:
        model.save_pretrained(folder, safe_serialization=True)
        prep.tokenizer.save_pretrained(folder)
    else:
        state = get_peft_model_state_dict(model)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / WEIGHTS))


def load(prep: Prepared, folder: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    model = unwrap(prep.model)
    saved, own = load_file(str(folder / WEIGHTS)), get_peft_model_state_dict(model)
    shapes = {k: tuple(v.shape) for k, v in saved.items()}
    if shapes != {k: tuple(v.shape) for k, v in own.items()}:
        raise UserError(f"{folder.name}: its virtual tokens {shapes} do not fit this run's", field="resume")
    set_peft_model_state_dict(model, saved)


def load_inference(run: Path, folder: Path) -> tuple[Any, Any]:
    """The base model with the virtual tokens of a checkpoint or of final/, for `llm-wizard generate`."""
    from peft import PeftModel

    from engine.runfolder import folder as runfolder
    from engine import spec as spec_mod

    spec = spec_mod.load(run / runfolder.SPEC)
    base, tokenizer = load_pretrained(spec.model.path, "model.path", model=spec.model)
    # peft 0.21 looks for the KV cache under `past_key_values`, which transformers 5 renamed: with a cache,
    # it would insert the virtual tokens again at every decoding step. Without one, every step reads the
    # whole sequence with the virtual tokens in front once, which is right (and cheap for samples).
    base.generation_config.use_cache = False
    if (folder / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(base, folder), tokenizer
    model = build(spec, base, tokenizer)
    prep = Prepared(model=model, tokenizer=tokenizer, data=None, param_groups=[])
    load(prep, folder)
    return model, tokenizer
