"""Checkpoints of a sharded (FSDP2, DTensor) run: every rank writes its own shards, one manifest covers them.

Inside a checkpoint folder (engine/checkpoints/store.py makes the whole folder atomic):
  sharded/.metadata, sharded/__<r>_0.distcp   torch.distributed.checkpoint (DCP): model and optimizer
                                               state, each rank's shards written by that rank
  layout.json                                  {"format": "dcp-fsdp2", "world_size": N}
  trainer_state.json, rng.pt, ...              rank 0's, written by the caller

How the ranks share engine/checkpoints/store.py's save: rank 0 runs checkpoint.save; inside its write_files it
broadcasts the temporary folder's path, every rank writes its shards there (DCP's save is collective and
returns on rank 0 only after every rank's files are written and fsynced), then rank 0 writes its own
files, the manifest (sha256 of every shard) and renames the folder. The other ranks wait in `follow`
until rank 0 broadcasts the outcome, so a save that rank 0 decides not to make never strands them.

Resuming needs the same world size (DCP could reshard, but the data order and RNG state are per layout):
`load` refuses another one. `consolidate` gathers the full state dict on rank 0 (CPU) and writes a normal
transformers/peft folder; `consolidate_offline` does the same from a checkpoint folder, in one process.

What is unpickled: DCP keeps its index (`.metadata`) as a pickle and non-tensor values (the optimizer's
hyperparameters) as torch.save bytes. We read the index with an unpickler that admits only DCP's
metadata classes and torch's size/dtype types, and the values with torch.load(weights_only=True); tensors
are read by DCP itself with weights_only=True. So a checkpoint folder cannot run code when loaded.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.checkpoints import store as checkpoint
from engine.errors import UserError

SHARDS = "sharded"
LAYOUT = "layout.json"
FORMAT = "dcp-fsdp2"


def is_sharded(model: Any) -> bool:
    """True when the model's parameters are DTensors (FSDP2's fully_shard, as accelerate's fsdp_version 2 does)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / LAYOUT).is_file()


# ---- reading DCP files without running code ---------------------------------------------------------

_ALLOWED = {
    "builtins": {"set", "frozenset", "slice", "complex"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},  # the checkpoint id
    "torch.serialization": {"_get_layout"},  # how torch pickles a layout (torch.load's weights_only allows it)
    "torch": {"Size", "device", "layout", "memory_format", "strided", "sparse_coo", "contiguous_format",
              "channels_last", "preserve_format", "channels_last_3d"},
    "torch.distributed.checkpoint.metadata": {"Metadata", "ChunkStorageMetadata", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint index")


def _reader(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _planner() -> Any:
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class WeightsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return WeightsOnlyPlanner()


# ---- save and load on the same layout ---------------------------------------------------------------

def _state(model: Any, optimizer: Any | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def write_shards(folder: Path, model: Any, optimizer: Any | None, *, rank: int, world: int) -> None:
    """Collective: every rank writes its shards of model and optimizer into folder/sharded/."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    dcp.save(_state(model, optimizer), storage_writer=dcp.FileSystemWriter(str(folder / SHARDS), sync_files=True))
    if rank == 0:
        (folder / LAYOUT).write_text(json.dumps({"format": FORMAT, "world_size": world,
                                                 "optimizer": optimizer is not None}))


def check_layout(folder: Path, world: int) -> dict[str, Any]:
    """The saved layout; UserError when it was saved by another number of processes."""
    folder = Path(folder)
    try:
        layout = json.loads((folder / LAYOUT).read_text())
        saved = int(layout["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder.name} is not a sharded checkpoint (no readable {LAYOUT})", field="resume") from None
    if layout.get("format") != FORMAT:
        raise UserError(f"{folder.name} has sharded format {layout.get('format')!r}; this version reads {FORMAT}",
                        field="resume")
    if saved != world:
        raise UserError(f"{folder.name} was saved by {saved} processes and this run has {world}; a sharded "
                        f"checkpoint resumes only on the same layout (set distributed.num_processes = {saved}, "
                        "or consolidate it and start a new run from the consolidated model)",
                        field="distributed.num_processes")
    return layout


def read_shards(folder: Path, model: Any, optimizer: Any | None, *, world: int) -> None:
    """Collective: load what write_shards wrote into a model sharded the same way (strict: a missing or
    extra tensor is an error)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    folder = Path(folder)
    check_layout(folder, world)
    state = _state(model, optimizer)
    dcp.load(state, storage_reader=_reader(folder / SHARDS), planner=_planner())
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])


# ---- the multi-process save around engine/checkpoints/store.py ----------------------------------------------

def _device() -> Any:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _local(t: Any) -> Any:
    return t.to_local() if hasattr(t, "to_local") else t


def any_nonfinite(model: Any, optimizer: Any | None) -> bool:
    """Collective: does any rank's shard of a parameter or optimizer tensor hold NaN or inf? (Each rank
    checks only its own shards, so no DTensor reduction is needed; one all_reduce of a flag.)"""
    import torch
    import torch.distributed as dist

    bad = False
    for p in model.parameters():
        tensors = [p.detach()] + [t for t in (optimizer.state.get(p, {}) if optimizer is not None else {}).values()
                                  if torch.is_tensor(t)]
        for t in tensors:
            t = _local(t)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = True
    flag = torch.tensor([int(bad)], device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _broadcast_json(obj: Any, rank: int) -> Any:
    """Rank 0's JSON-able value on every rank (plain tensors: no pickle between ranks)."""
    import torch
    import torch.distributed as dist

    device = _device()
    data = json.dumps(obj).encode() if rank == 0 else b""
    n = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(n, src=0)
    if rank == 0:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(int(n.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().numpy().tobytes()))


class Leader:
    """Rank 0's side: `write(folder)` inside checkpoint.save's write_files, `finish(name)` after it."""

    def __init__(self, model: Any, optimizer: Any | None, world: int,
                 writer: Callable[..., None] | None = None) -> None:
        self.model, self.optimizer, self.world = model, optimizer, world
        self.writer = writer or write_shards  # engine/checkpoints/zero.py passes DeepSpeed's
        self.finished = False

    def write(self, folder: Path) -> None:
        _broadcast_json({"write": str(folder)}, 0)
        self.writer(folder, self.model, self.optimizer, rank=0, world=self.world)

    def finish(self, name: str | None) -> None:
        """Tell the followers the outcome: a name, or None (no checkpoint this time). Always call it once."""
        if not self.finished:
            self.finished = True
            _broadcast_json({"done": name or ""}, 0)


def follow(model: Any, optimizer: Any | None, *, rank: int, world: int,
           writer: Callable[..., None] | None = None) -> str | None:
    """Ranks other than 0: write shards whenever rank 0 asks, until it reports the outcome."""
    while True:
        msg = _broadcast_json(None, rank)
        if "write" in msg:
            (writer or write_shards)(Path(msg["write"]), model, optimizer, rank=rank, world=world)
        else:
            return msg["done"] or None


def save(run: Path, step: int, branch: int, model: Any, optimizer: Any | None, write_rank0: Callable[[Path], None],
         *, rank: int, world: int, parent: str | None = None, meta: dict[str, Any] | None = None,
         replace: bool = False) -> str | None:
    """Collective: one atomic checkpoint of a sharded model (rank 0 also writes `write_rank0`'s files).
    Returns the checkpoint's name on every rank."""
    if rank:
        return follow(model, optimizer, rank=rank, world=world)
    lead = Leader(model, optimizer, world)
    name = None
    try:
        def write(folder: Path) -> None:
            lead.write(folder)
            write_rank0(folder)

        name = checkpoint.save(run, step, branch, write, parent=parent, meta=meta, replace=replace).name
    finally:
        lead.finish(name)
    return name


# ---- consolidation into a normal transformers/peft folder ---------------------------------------------

def full_state_dict(model: Any) -> dict[str, Any]:
    """Collective: the whole model's state dict on rank 0, on the CPU (empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained(model: Any, state: dict[str, Any], folder: Path, tokenizer: Any = None) -> None:
    """Write `state` through the model's own save_pretrained (transformers or peft: a peft model keeps only
    its adapter), as safetensors, with the tokenizer: a folder from_pretrained reads."""
    folder = Path(folder)
    if hasattr(model, "config"):
        model.config.use_cache = True  # training turned the KV cache off; generation wants it
    model.save_pretrained(folder, state_dict=state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def consolidate(model: Any, folder: Path, *, rank: int, tokenizer: Any = None) -> Path | None:
    """Collective: gather the sharded model and write it on rank 0 as a from_pretrained folder."""
    state = full_state_dict(model)
    if rank:
        return None
    save_pretrained(model, state, folder, tokenizer)
    return Path(folder)


def consolidate_offline(ckpt: Path, model_dir: Path, out: Path) -> Path:
    """One process, no process group: a sharded checkpoint (verified by its manifest) + the run's model/
    folder (config, tokenizer) -> a from_pretrained folder `out`. Peak memory: one full copy of the model."""
    import torch
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ckpt, model_dir = Path(ckpt), Path(model_dir)
    problem = checkpoint.verify(ckpt, full=True)
    if problem:
        raise UserError(f"{ckpt.name} is not a usable checkpoint ({problem})", field="checkpoint")
    layout = json.loads((ckpt / LAYOUT).read_text()) if is_sharded_checkpoint(ckpt) else None
    if not layout or layout.get("format") != FORMAT:
        raise UserError(f"{ckpt.name} is not a sharded checkpoint", field="checkpoint")
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.to_empty(device="cpu")  # no random initialisation: every tensor is read from the shards
    model.tie_weights()
    state = {"model": model.state_dict()}  # DCP fills these tensors in place
    reader = _reader(ckpt / SHARDS)
    saved = reader.read_metadata().state_dict_metadata
    missing = [k for k in state["model"] if f"model.{k}" not in saved]
    if missing:  # e.g. a LoRA run: its shards hold base_model.model.* names; its final/ is consolidated live
        raise UserError(f"{ckpt.name} does not hold a whole {config.model_type} model (missing {missing[:3]}); "
                        "offline consolidation reads checkpoints of runs that train every weight", field="checkpoint")
    dcp.load(state, storage_reader=reader, planner=_planner(), no_dist=True)
    missing = [k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)]
    if missing:
        raise UserError(f"{ckpt.name}: tensors not filled from the shards: {missing[:5]}", field="checkpoint")
    out = Path(out)
    save_pretrained(model, state["model"], out, AutoTokenizer.from_pretrained(model_dir))
    return out
