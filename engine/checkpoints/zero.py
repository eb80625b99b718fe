"""DeepSpeed ZeRO-2/3 checkpoints (distributed.strategy zero2/zero3) and the consolidated final/ folder.
engine/run/distributed/trainer.py uses this module where it uses engine/checkpoints/fsdp.py for FSDP, with
the same names; the accelerator and the optimizer step of such a run are engine/run/distributed/zero_engine.py.

Inside a checkpoint folder (engine/checkpoints/store.py makes the whole folder atomic, its manifest hashes every file):
  zero/state/*_model_states.pt, *_optim_states.pt   DeepSpeed's own save_checkpoint: each rank writes its
                                                     partitions into rank 0's temporary folder (the same
                                                     coordination as sharded_checkpoint.Leader/follow)
  layout.json                                        {"format": "deepspeed-zero", "stage": S, "world_size": N}
  trainer_state.json, rng.pt, ...                    rank 0's, written by the caller

What is unpickled: DeepSpeed's load_checkpoint reads its .pt files with full unpickling (weights_only off: they
hold its config objects). We call it only on a folder of this run whose manifest (written by this run's rank 0) still
matches every file's sha256 and that this user owns, i.e. files this run wrote; nothing else is loaded that way.
final/ is gathered live from the running engine (no checkpoint file is read), fp32 master weights where the
optimizer holds them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.checkpoints import store as checkpoint

from engine.checkpoints import fsdp as sharded_checkpoint
from engine.errors import UserError

FORMAT = "deepspeed-zero"
FOLDER, TAG = "zero", "state"
LAYOUT = sharded_checkpoint.LAYOUT


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def stage(engine: Any) -> int:
    return int(engine.zero_optimization_stage())


# ---- checkpoints (the same names as engine/checkpoints/fsdp.py; `model` is DeepSpeed's engine, which
# accelerate.prepare returns) ------------------------------------------------------------------------------

def any_nonfinite(model: Any, optimizer: Any) -> bool:
    """Collective: does any rank's fp32 partition, optimizer state or local parameter hold NaN or inf?"""
    import torch
    import torch.distributed as dist

    torch_opt = optimizer.optimizer.optimizer  # accelerate's wrapper -> ZeRO optimizer -> the torch optimizer
    tensors = [p for g in torch_opt.param_groups for p in g["params"]]
    tensors += [t for s in torch_opt.state.values() for t in s.values() if torch.is_tensor(t)]
    tensors += [p.detach() for p in model.parameters()]  # ZeRO-3: empty placeholders, checked as such
    bad = any(t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()) for t in tensors)
    flag = torch.tensor([int(bad)], device=sharded_checkpoint._device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def write_shards(folder: Path, model: Any, optimizer: Any, *, rank: int, world: int) -> None:
    """Collective: DeepSpeed's save_checkpoint into folder/zero/state/ (each rank its partitions)."""
    folder = Path(folder)
    model.save_checkpoint(str(folder / FOLDER), tag=TAG, client_state={}, save_latest=False)
    if rank == 0:
        (folder / LAYOUT).write_text(json.dumps({"format": FORMAT, "stage": stage(model), "world_size": world}))


def Leader(model: Any, optimizer: Any, world: int) -> sharded_checkpoint.Leader:  # noqa: N802 - same use as FSDP's
    return sharded_checkpoint.Leader(model, optimizer, world, writer=write_shards)


def follow(model: Any, optimizer: Any, *, rank: int, world: int) -> str | None:
    return sharded_checkpoint.follow(model, optimizer, rank=rank, world=world, writer=write_shards)


def check_layout(folder: Path, world: int, zero_stage: int) -> None:
    folder = Path(folder)
    try:
        layout = json.loads((folder / LAYOUT).read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder.name} is not a ZeRO checkpoint (no readable {LAYOUT})", field="resume") from None
    if layout.get("format") != FORMAT:
        raise UserError(f"{folder.name} has sharded format {layout.get('format')!r}; a zero{zero_stage} run reads "
                        f"{FORMAT} (resume it with the strategy that saved it)", field="distributed.strategy")
    if layout.get("stage") != zero_stage:
        raise UserError(f"{folder.name} was saved by ZeRO stage {layout.get('stage')} and this run uses stage "
                        f"{zero_stage}; set distributed.strategy = zero{layout.get('stage')}",
                        field="distributed.strategy")
    if layout.get("world_size") != world:
        raise UserError(f"{folder.name} was saved by {layout.get('world_size')} processes and this run has {world}; "
                        "a ZeRO checkpoint resumes only on the same layout (set distributed.num_processes = "
                        f"{layout.get('world_size')})", field="distributed.num_processes")


def _check_written_by_this_run(folder: Path) -> None:
    """DeepSpeed unpickles its files: only a checkpoint whose manifest still matches and that we own."""
    problem = checkpoint.verify(folder, full=True)
    if problem:
        raise UserError(f"{folder.name} is not a usable checkpoint ({problem})", field="checkpoint")
    for p in (folder / FOLDER).rglob("*"):
        if p.stat().st_uid != os.getuid():
            raise UserError(f"{folder.name}: {p.name} belongs to another user; DeepSpeed's files are only loaded "
                            "when this run wrote them", field="checkpoint")


def read_shards(folder: Path, model: Any, optimizer: Any, *, world: int) -> None:
    """Collective: load what write_shards wrote (model partitions and optimizer state) on the same layout."""
    folder = Path(folder)
    check_layout(folder, world, stage(model))
    _check_written_by_this_run(folder)
    path, _ = model.load_checkpoint(str(folder / FOLDER), tag=TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=False, load_module_strict=True)
    if path is None:
        raise UserError(f"{folder.name}: DeepSpeed found no checkpoint in it", field="resume")


def is_zero_checkpoint(folder: Path) -> bool:
    try:
        return json.loads((Path(folder) / LAYOUT).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ---- final/: a normal transformers/peft folder -------------------------------------------------------

def full_state_dict(model: Any) -> dict[str, Any]:
    """Collective: the whole model on rank 0 (CPU, fp32 master weights for trained parameters), {} elsewhere."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    module = model.module
    rank0 = dist.get_rank() == 0
    state: dict[str, Any] = {}
    for name, p in module.named_parameters():  # the same order on every rank: each gather is collective
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None:  # frozen (LoRA's base): the module's own copy, gathered under ZeRO-3
            with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                full = p.detach().clone()
        if rank0:
            state[name] = full.detach().cpu().clone()
    if rank0:  # persistent buffers; a tied head is the embedding's parameter, which save_pretrained knows
        keys = set(module.state_dict())
        state.update({k: b.detach().cpu().clone() for k, b in module.named_buffers() if k in keys})
    return state


def consolidate(model: Any, folder: Path, *, rank: int, tokenizer: Any = None) -> Path | None:
    """Collective: gather the partitioned model and write it on rank 0 as a from_pretrained folder."""
    state = full_state_dict(model)
    if rank:
        return None
    sharded_checkpoint.save_pretrained(model.module, state, folder, tokenizer)
    return Path(folder)


def consolidate_offline(ckpt: Path, model_dir: Path, out: Path) -> Path:
    """One process: a ZeRO checkpoint of this run + its model/ folder -> a from_pretrained folder `out` (fp32).
    DeepSpeed's zero_to_fp32 unpickles the checkpoint's files: only after the manifest and owner checks above
    (files this run wrote). Peak memory: one full copy of the model plus the checkpoint's fp32 partitions."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ckpt = Path(ckpt)
    if not available():
        raise UserError(f"{ckpt.name} holds DeepSpeed ZeRO partitions, which need the deepspeed package to read "
                        "(pip install 'llm-wizard[deepspeed]'); the run's final/ folder needs nothing",
                        field="checkpoint")
    if not is_zero_checkpoint(ckpt):
        raise UserError(f"{ckpt.name} is not a ZeRO checkpoint", field="checkpoint")
    _check_written_by_this_run(ckpt)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / FOLDER), tag=TAG)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]  # a tied head is loaded
    if untied or unexpected:
        raise UserError(f"{ckpt.name} does not match the run's model (missing {untied[:3]}, unexpected "
                        f"{unexpected[:3]}); offline consolidation reads runs that train every weight",
                        field="checkpoint")
    sharded_checkpoint.save_pretrained(model, {k: v for k, v in model.state_dict().items()}, Path(out),
                                       AutoTokenizer.from_pretrained(model_dir))
    return Path(out)
