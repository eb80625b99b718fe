"""Test-only harness for engine/checkpoints/fsdp.py: two gloo processes on the CPU, a tiny GPT-2 built from
its config and sharded with FSDP2's fully_shard directly (no accelerate). `run_scenario` spawns the ranks;
each writes what the tests compare into the output folder (tensors as safetensors, facts as JSON)."""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path
from typing import Any

WORLD = 2
STEPS_BEFORE, STEPS_AFTER = 2, 2
VOCAB, SEQ = 64, 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0,
                      eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)


def tiny_tokenizer() -> Any:
    """A word-level tokenizer trained on generated text (no hub), with as many ids as the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [f"w{i}" for i in range(VOCAB - 2)]
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def sharded_model(seed: int, lr: float = 1e-2) -> tuple[Any, Any]:
    """A tiny GPT-2 with each block and the root sharded over all ranks (as accelerate's fsdp_version 2 wraps
    transformer layers), and its AdamW (fused, as engine/run/train_state.py builds it)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_config())
    mesh = init_device_mesh("cpu", (WORLD,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt


def batch(step: int, rank: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(0, VOCAB, (2, SEQ), generator=g)


def train(model: Any, opt: Any, first: int, last: int, rank: int) -> None:
    for step in range(first, last):
        x = batch(step, rank)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def local_state(model: Any, opt: Any) -> dict[str, Any]:
    """This rank's shards of every parameter and optimizer tensor, as plain tensors (copies)."""
    import torch

    out = {}
    for name, p in model.named_parameters():
        out[f"param/{name}"] = p.to_local().detach().clone()
        for key, t in opt.state.get(p, {}).items():
            if torch.is_tensor(t):
                out[f"optim/{name}/{key}"] = (t.to_local() if hasattr(t, "to_local") else t).detach().clone()
    return out


def probe_ids() -> Any:
    import torch

    return torch.arange(SEQ).remainder(VOCAB).unsqueeze(0)


def _scenario(rank: int, out: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from engine.checkpoints import store as checkpoint
    from engine.checkpoints import fsdp as sc
    from engine.errors import UserError

    run = out / "run"
    facts: dict[str, Any] = {"rank": rank}
    model, opt = sharded_model(seed=0)
    facts["sharded"] = sc.is_sharded(model)
    train(model, opt, 0, STEPS_BEFORE, rank)
    saved = local_state(model, opt)

    def write_rank0(folder: Path) -> None:
        (folder / "trainer_state.json").write_text(json.dumps({"step": STEPS_BEFORE}))

    name = sc.save(run, STEPS_BEFORE, 0, model, opt, write_rank0, rank=rank, world=WORLD)
    facts["name"] = name
    train(model, opt, STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER, rank)  # the uninterrupted run
    straight = local_state(model, opt)

    fresh, fresh_opt = sharded_model(seed=1, lr=0.5)  # other weights and LR, no optimizer state yet
    facts["fresh_differs"] = any(not torch.equal(a, saved[k]) for k, a in local_state(fresh, fresh_opt).items())
    ckpt = run / checkpoint.CHECKPOINTS / name
    try:
        sc.read_shards(ckpt, fresh, fresh_opt, world=WORLD + 1)
    except UserError as e:
        facts["mismatch"] = str(e)
    sc.read_shards(ckpt, fresh, fresh_opt, world=WORLD)
    loaded = local_state(fresh, fresh_opt)
    facts["lr_after_load"] = [g["lr"] for g in fresh_opt.param_groups]
    train(fresh, fresh_opt, STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER, rank)  # the resumed run
    resumed = local_state(fresh, fresh_opt)
    save_file(saved, str(out / f"saved-{rank}.safetensors"))
    save_file(loaded, str(out / f"loaded-{rank}.safetensors"))
    save_file(straight, str(out / f"straight-{rank}.safetensors"))
    save_file(resumed, str(out / f"resumed-{rank}.safetensors"))

    fresh.eval()
    with torch.no_grad():
        logits = fresh(input_ids=probe_ids()).logits  # a collective: every rank runs the forward
    if rank == 0:
        save_file({"logits": logits.contiguous()}, str(out / "sharded_logits.safetensors"))
    facts["consolidated"] = str(sc.consolidate(fresh, out / "final", rank=rank, tokenizer=tiny_tokenizer()))
    return facts


def _crash_scenario(rank: int, out: Path) -> dict[str, Any]:
    """Two saves; with LLMW_CRASH_AT=ckpt:before_manifest:2 rank 0 dies inside the second, after every rank
    wrote its shards (mp.spawn then ends rank 1)."""
    from engine.checkpoints import fsdp as sc

    model, opt = sharded_model(seed=0)
    for step in (1, 2):
        train(model, opt, step - 1, step, rank)
        sc.save(out / "run", step, 0, model, opt, lambda folder: None, rank=rank, world=WORLD)
    return {"rank": rank, "saved": 2}


def _worker(rank: int, port: int, out: str, scenario: str = "main") -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        facts = (_crash_scenario if scenario == "crash" else _scenario)(rank, Path(out))
    except BaseException:
        facts = {"rank": rank, "error": traceback.format_exc()}
        raise
    finally:
        Path(out, f"facts-{rank}.json").write_text(json.dumps(facts))
        dist.destroy_process_group()


def run_scenario(out: Path, scenario: str = "main") -> list[dict[str, Any]]:
    """Spawn the two ranks; their facts, rank by rank (raises ProcessExitedException if a rank died)."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(free_port(), str(out), scenario), nprocs=WORLD, join=True)
    return [json.loads((out / f"facts-{r}.json").read_text()) for r in range(WORLD)]


# ---- the real trainer (engine/run/distributed/trainer.py) under accelerate's own FSDP2 preparation ------------------

def fsdp_env(spec: Any) -> dict[str, str]:
    """The FSDP_* variables `accelerate launch` derives from launch_config's fsdp_config (booleans as "true"/
    "false", the rest as written): FullyShardedDataParallelPlugin() reads them."""
    from engine.run.distributed import launch as launch_config

    cfg = launch_config.accelerate_config(spec, cuda=True)["fsdp_config"]
    return {"FSDP_" + k.removeprefix("fsdp_").upper(): str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in cfg.items()}


def _force_fsdp2() -> None:
    """accelerate sets DistributedType.FSDP only on accelerators (accelerate/state.py); on this CPU machine the
    test makes the Accelerator the trainer builds an FSDP one after the fact, so accelerator.prepare takes its
    real FSDP2 path (fully_shard per transformer block, optimizer switched to the DTensor parameters)."""
    import accelerate
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = accelerate.Accelerator.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        self.state.distributed_type = DistributedType.FSDP

    accelerate.Accelerator.__init__ = init


def _trainer_worker(rank: int, port: int, run: str, resume: bool) -> None:
    import torch

    from engine.runfolder import folder as runfolder
    from engine import spec as spec_mod
    from engine.run.distributed.trainer import DistributedTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), ACCELERATE_TORCH_DEVICE="cpu",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    spec = spec_mod.load(Path(run) / runfolder.SPEC)
    os.environ.update(fsdp_env(spec))
    _force_fsdp2()
    trainer = DistributedTrainer(Path(run), spec, rank=rank, world=WORLD, resume=resume)
    code = trainer.run_job()
    Path(run, f"exit-{rank}.json").write_text(json.dumps({"code": code, "sharded": trainer.sharded}))


def run_trainer(run: Path, *, resume: bool = False) -> list[dict[str, Any]]:
    """Both ranks of DistributedTrainer on `run` (made by engine.run.job.create); each rank's exit code."""
    import torch.multiprocessing as mp

    for r in range(WORLD):
        Path(run, f"exit-{r}.json").unlink(missing_ok=True)
    mp.spawn(_trainer_worker, args=(free_port(), str(run), resume), nprocs=WORLD, join=True)
    return [json.loads(Path(run, f"exit-{r}.json").read_text()) for r in range(WORLD)]
