"""LoRA (book 5.3.5, listing 5.6): a frozen pretrained causal LM with small trainable low-rank matrices.

peft wraps the chosen Linear layers (`options.lora_targets`; when empty, peft's list for the model's
architecture: GPT-2 `c_attn`, Llama/Mistral/Qwen `q_proj`/`v_proj`, ...) with B @ A of rank
`lora_rank`, scaled by `lora_alpha / lora_rank`. The base stays bit-identical; only A and B train.
The book's listing is token classification; here the same LoRA trains a causal LM on your text.

Checkpoints and final/ hold the adapter alone (peft's adapter_config.json + adapter_model.safetensors),
kilobytes to megabytes against the base's gigabytes: its size on disk is reported in the `done` event
and the final message. `options.merge = true` also writes final/merged/: the base with the adapter
folded in, a plain model for `AutoModelForCausalLM.from_pretrained`.

Options: lora_rank (16), lora_alpha (2 x rank), lora_dropout (0.05), lora_targets ([] = detected, or
"all-linear"), merge (false). qlora.py reuses everything here on a 4-bit base.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques.base import Prepared, SetupContext, check_options
from engine.models.pretrained import load_config, load_tokenizer, load_weights, unwrap

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's own file name, so a checkpoint is a peft folder too
ADAPTER_CONFIG = "adapter_config.json"
MERGED = "merged"
DEFAULTS: dict[str, Any] = {"lora_rank": 16, "lora_alpha": None, "lora_dropout": 0.05, "lora_targets": [],
                            "merge": False}


def options(spec: Any, technique: str = "lora") -> dict[str, Any]:
    """The LoRA options with defaults, validated (a UserError names the bad one)."""
    check_options(spec.options, list(DEFAULTS), technique)
    o = {**DEFAULTS, **spec.options}
    rank = o["lora_rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 4096:
        raise UserError(f"options.lora_rank: a whole number from 1 to 4096, got {rank!r}", field="options.lora_rank")
    if o["lora_alpha"] is None:
        o["lora_alpha"] = 2 * rank
    _number(o, "lora_alpha", "a positive number", lambda v: v > 0)
    _number(o, "lora_dropout", "a number from 0 to below 1", lambda v: 0 <= v < 1)
    targets = o["lora_targets"]
    if targets != "all-linear" and not (isinstance(targets, list) and all(isinstance(t, str) and t for t in targets)):
        raise UserError(f"options.lora_targets: a list of module names (e.g. [\"q_proj\", \"v_proj\"]) or "
                        f"\"all-linear\", got {targets!r}", field="options.lora_targets")
    if not isinstance(o["merge"], bool):
        raise UserError(f"options.merge: true or false, got {o['merge']!r}", field="options.merge")
    return o


def _number(o: dict[str, Any], key: str, what: str, ok: Any) -> None:
    v = o[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
        raise UserError(f"options.{key}: {what}, got {v!r}", field=f"options.{key}")


def linear_names(model: Any) -> list[str]:
    """Short names of the Linear (and GPT-2 Conv1D) layers inside the transformer blocks, output head excluded."""
    import torch
    from transformers.pytorch_utils import Conv1D

    out = getattr(model, "get_output_embeddings", lambda: None)()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not out}
    return sorted(names)


def target_modules(model: Any, requested: list[str] | str) -> list[str] | str:
    """The modules LoRA wraps: as requested (checked against the model), else peft's choice for the
    architecture, else every Linear in the blocks (an architecture peft has no list for)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    have = linear_names(model)
    if requested == "all-linear":
        return requested
    if requested:
        missing = [t for t in requested if t not in have]
        if missing:
            raise UserError(f"options.lora_targets: {', '.join(missing)} is not a Linear layer of this "
                            f"{model.config.model_type} model; choose from {', '.join(have)}",
                            field="options.lora_targets")
        return list(requested)
    detected = [t for t in PEFT_TARGETS.get(model.config.model_type, []) if t in have]
    if detected:
        return detected
    if not have:
        raise UserError(f"model.path: this {model.config.model_type} model has no Linear layers for LoRA",
                        field="model.path")
    return have


def wrap(base: Any, spec: Any, technique: str = "lora", new_tokens: list[int] | None = None) -> Any:
    """The peft model: `base` frozen, LoRA matrices on the target modules (seeded: the same seed, the same A).
    `new_tokens`: ids a chat template added; their embedding (and output) rows are trained too."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    o = options(spec, technique)
    targets = target_modules(base, o["lora_targets"])
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=o["lora_rank"], lora_alpha=o["lora_alpha"],
                        lora_dropout=o["lora_dropout"], target_modules=targets,
                        fan_in_fan_out=base.config.model_type == "gpt2",  # GPT-2's Conv1D stores W transposed
                        trainable_token_indices=token_rows(base, new_tokens) if new_tokens else None)
    torch.manual_seed(spec.seed)
    return get_peft_model(base, config)


def token_rows(base: Any, ids: list[int]) -> dict[str, list[int]]:
    """peft's trainable_token_indices for `ids`: the input embedding's rows, and the output layer's when it
    is not tied to it (a new end-of-turn token must be predicted, not only read)."""
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in base.named_modules()}
    inputs, outputs = base.get_input_embeddings(), base.get_output_embeddings()
    rows = {names[id(inputs)]: list(ids)}
    if outputs is not None and outputs.weight is not inputs.weight:
        rows[names[id(outputs)]] = list(ids)
    return rows


def load_base(spec: Any, *, dtype: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """(pretrained causal LM, its tokenizer) from spec.model.path (a local folder or a cached Hub id);
    its own code and pickle weights load only as spec.model opts in (engine/models/trust.py). `kwargs` go to
    from_pretrained (QLoRA's quantization_config, device_map)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = spec.model.path
    config = load_config(path, "model.path", spec.model)
    tokenizer = load_tokenizer(spec.tokenizer.path or path, "tokenizer.path" if spec.tokenizer.path else "model.path",
                               spec.model)
    model = load_weights(AutoModelForCausalLM, path, "model.path", config, spec.model, dtype=dtype or torch.float32,
                         **kwargs)
    check_fit(spec, model, tokenizer)
    model.config.use_cache = False  # no KV cache while training (it also conflicts with checkpointing)
    return model, tokenizer


def check_fit(spec: Any, model: Any, tokenizer: Any) -> None:
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit and spec.train.seq_len > limit:
        raise UserError(f"train.seq_len {spec.train.seq_len} exceeds the model's {limit} positions",
                        field="train.seq_len")
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows} rows: "
                        "they do not belong together", field="tokenizer.path")


def base_dtype(spec: Any) -> Any:
    """A frozen base needs no fp32 master copy: under mixed precision it loads in that 16-bit type (pure
    bf16: bf16, the adapters too, engine/run/train_state.py `to_weight_dtype`)."""
    import torch

    return {"bf16": torch.bfloat16, "bf16-pure": torch.bfloat16, "fp16": torch.float16}.get(
        spec.train.precision, torch.float32)


def preflight(spec: Any, technique: str = "lora") -> None:
    """Before launch, before a run folder exists: bad options, and a model that cannot be found (a Hub id
    not in the cache while offline), are refused. Reads the config only, no weights."""
    options(spec, technique)
    load_config(spec.model.path, "model.path", spec.model)


def setup(ctx: SetupContext) -> Prepared:
    spec = ctx.spec
    options(spec)  # bad options fail before any loading
    ctx.progress(f"loading {spec.model.path}")
    base, tokenizer = load_base(spec, dtype=base_dtype(spec))
    return finish_setup(ctx, base, tokenizer, "lora")


def finish_setup(ctx: SetupContext, base: Any, tokenizer: Any, technique: str, *,
                 checkpointing_done: bool = False) -> Prepared:
    """The shared second half of LoRA's and QLoRA's setup: data, the adapter, optimizer groups."""
    from engine.data.prepare import source_blocks

    spec = ctx.spec
    data = source_blocks(ctx, tokenizer, base)  # any data source, through its chat template; replies trained
    if spec.train.gradient_checkpointing and not checkpointing_done:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = wrap(base, spec, technique, new_tokens=[tokenizer.convert_tokens_to_ids(t) for t in data.added_tokens])
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    wd = spec.train.weight_decay
    return Prepared(model=model, tokenizer=tokenizer, data=data.blocks, data_fingerprint=data.fingerprint,
                    param_groups=[{"params": trainable, "weight_decay": wd}],
                    extra={"base_path": spec.model.path, "merge": options(spec, technique)["merge"],
                           "merge_dtype": base_dtype(spec)})


def loss(prep: Prepared, batch: Any) -> Any:
    from engine.data.pack import lm_loss

    return lm_loss(prep.model, batch)  # (B, T+1) ids, or (B, 3, T+1) ids + loss mask + position ids


def save(prep: Prepared, folder: Path, *, final: bool = False) -> dict[str, Any] | None:
    """A checkpoint or final/: the adapter alone (a peft folder). final/ also gets the tokenizer, the
    merged model if asked, and the returned summary names the adapter's size on disk."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    model = unwrap(prep.model)
    if not final:
        # The trained rows of tokens a chat template added are in the adapter (trainable_tokens_delta): the
        # resized embedding itself is the base's, not saved. A tied head shares the delta: copies, not views.
        state = get_peft_model_state_dict(model, save_embedding_layers=False)
        save_file({k: v.detach().clone().contiguous().cpu() for k, v in state.items()}, str(folder / ADAPTER_WEIGHTS))
        model.peft_config["default"].save_pretrained(str(folder))
        return None
    model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
    prep.tokenizer.save_pretrained(folder)
    if prep.extra.get("merge"):
        write_merged(prep.extra["base_path"], folder, folder / MERGED, prep.tokenizer, prep.extra["merge_dtype"])
    return size_summary(folder, prep.extra["base_path"])


def load(prep: Prepared, folder: Path) -> None:
    """Load a checkpoint's adapter, strictly: the same tensors with the same shapes, or an error."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    model = unwrap(prep.model)
    saved, own = load_file(str(folder / ADAPTER_WEIGHTS)), get_peft_model_state_dict(model, save_embedding_layers=False)
    want = {k: tuple(v.shape) for k, v in own.items()}
    got = {k: tuple(v.shape) for k, v in saved.items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise UserError(f"{folder.name}: its adapter does not fit this run's ({len(diff)} tensors differ, "
                        f"e.g. {diff[0]})", field="resume")
    result = set_peft_model_state_dict(model, saved)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{folder.name}: adapter tensors {result.unexpected_keys[:3]} were not used", field="resume")


def load_inference(run: Path, folder: Path) -> tuple[Any, Any]:
    """The base with the adapter of a checkpoint or of final/, for `llm-wizard generate`."""
    from engine.runfolder import folder as runfolder
    from engine import spec as spec_mod

    spec = spec_mod.load(Path(run) / runfolder.SPEC)
    base, tokenizer = load_base(spec)
    if (Path(run) / "model" / "tokenizer_config.json").is_file():  # as trained: its chat template, added tokens
        from transformers import AutoTokenizer

        from engine.data.pack import resize_embeddings

        tokenizer = AutoTokenizer.from_pretrained(Path(run) / "model")
        resize_embeddings(base, tokenizer)
    return attach(base, folder), tokenizer


def attach(base: Any, folder: Path) -> Any:
    """`base` with the adapter in `folder` (a checkpoint or final/), ready to generate."""
    from peft import PeftModel

    base.config.use_cache = True  # load_base turned it off for training
    return PeftModel.from_pretrained(base, str(folder), is_trainable=False)


def write_merged(base_path: str, adapter: Path, target: Path, tokenizer: Any, dtype: Any) -> None:
    """The base, loaded afresh (fp32, or the 16-bit type it trained in), with the adapter folded into its
    weights: a plain model. (Merging into a 4-bit base would round the sum to NF4; QLoRA merges here too.)"""
    from transformers import AutoModelForCausalLM

    from engine.data.pack import resize_embeddings

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=False)
    resize_embeddings(base, tokenizer)  # rows for the tokens a chat template added (their trained values follow)
    merged = attach(base, adapter).merge_and_unload()
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def weights_bytes(path: str | Path) -> int | None:
    """Bytes of a model's weight files: a local folder, or a Hub id's cached snapshot (None if unknown)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(path), local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached, or not a Hub id: the size is just unknown
            return None
    for suffix in (".safetensors", ".bin"):  # what from_pretrained reads: safetensors when both are there
        files = [f for f in folder.iterdir() if f.is_file() and f.suffix == suffix]
        if files:
            return sum(os.path.getsize(f) for f in files)
    return None


def size_summary(final: Path, base_path: str) -> dict[str, Any]:
    adapter = (final / ADAPTER_WEIGHTS).stat().st_size
    base = weights_bytes(base_path)
    text = f"adapter {_human(adapter)} on disk"
    if base:
        text += f", {100 * adapter / base:.2g}% of the base model's {_human(base)}"
    return {"adapter_bytes": adapter, "base_bytes": base, "summary": text}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
