"""How a run of several processes is started: the accelerate config in the run folder and the commands.

We never write a launcher of our own: every process of a multi-process run is started by
`accelerate launch` (torch's elastic agent underneath), from the config this module writes into the run
folder (`accelerate_config.yaml`). On each machine a small supervisor (engine/run/distributed/supervisor.py) runs
the accelerate command; on machine 0 it owns the run folder's lock and reports a rank that dies.

Several machines: the run folder must be visible at the same path on every machine (shared storage),
since every rank reads the spec, the data and, on rollback or resume, the checkpoints from it; and the
same Python environment must be installed at the same path. Nothing heavy is imported here.
"""

from __future__ import annotations

import shlex
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

from engine import vocabulary
from engine.errors import UserError
from engine.machine.strategies import GPU_ONLY_STRATEGIES, TRAINABLE_STRATEGIES, deepspeed_missing

CONFIG = "accelerate_config.yaml"
SUPERVISOR = "engine.run.distributed.supervisor"
WORKER = "engine.run.distributed.worker"
ACCELERATE = ("-m", "accelerate.commands.launch")  # `accelerate launch`, from this interpreter's environment
# Which strategies this machine can train: engine/machine/strategies.py.


def is_multi(spec: Any) -> bool:
    return spec.distributed.num_processes > 1


def job_module(run: Path) -> str:
    """The module `engine.run.job.launch` starts for this run folder: the supervisor when it has several processes."""
    try:
        data = tomllib.loads((Path(run) / "spec.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return "engine.run.job"  # the job itself reports an unreadable spec
    procs = data.get("distributed", {}).get("num_processes", 1)
    return SUPERVISOR if isinstance(procs, int) and procs > 1 else "engine.run.job"


def check_supported(spec: Any, *, cuda: bool | None = None) -> None:
    """Refuse, before any process starts, what this version cannot train correctly (UserError). `cuda`:
    whether this machine has CUDA GPUs (asked of torch when None and the strategy needs them)."""
    d = spec.distributed
    if not is_multi(spec):
        return
    if d.strategy not in TRAINABLE_STRATEGIES:
        raise UserError(f"distributed.strategy: {d.strategy} is not trained by this version; use fsdp on GPUs, "
                        "or ddp", field="distributed.strategy")
    if (missing := deepspeed_missing(d.strategy)) is not None:
        raise UserError(f"distributed.strategy: {missing}", field="distributed.strategy")
    if d.strategy in GPU_ONLY_STRATEGIES:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            raise UserError(f"distributed.strategy: {d.strategy} needs CUDA GPUs (accelerate runs FSDP only on an "
                            "accelerator) and this machine has none; use ddp, which runs on the CPU too",
                            field="distributed.strategy")
    if spec.train.compile:
        raise UserError("train.compile: not yet combined with several processes; turn it off",
                        field="train.compile")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_config(spec: Any, *, cuda: bool, port: int | None = None) -> dict[str, Any]:
    """The accelerate config for this spec (what `accelerate config` would have asked for)."""
    d, t = spec.distributed, spec.train
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "num_machines": d.num_machines, "num_processes": d.num_processes,
        "machine_rank": d.machine_rank, "main_process_port": port or d.main_process_port,
        "mixed_precision": vocabulary.precision(t.precision).autocast, "rdzv_backend": "static",
        "same_network": True, "use_cpu": not cuda, "debug": False,
    }
    if d.num_machines > 1:
        cfg["main_process_ip"] = d.main_process_ip
    if cuda:
        cfg["gpu_ids"] = "all"
    if d.strategy == "ddp":
        cfg["distributed_type"] = "MULTI_GPU"  # on a CPU-only machine accelerate runs it over gloo
    elif d.strategy == "fsdp":
        cfg["distributed_type"] = "FSDP"
        # FSDP2 (fully_shard, DTensor parameters): what engine/checkpoints/fsdp.py saves and consolidates.
        # Each transformer block is one shard group (the model's _no_split_modules); every rank builds the
        # same model from the same seed, so no broadcast of the initial weights is needed.
        cfg["fsdp_config"] = {"fsdp_version": 2, "fsdp_reshard_after_forward": True,
                              "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                              "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_offload_params": False,
                              "fsdp_cpu_ram_efficient_loading": False, "fsdp_activation_checkpointing": False}
    else:
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {"zero_stage": 2 if d.strategy == "zero2" else 3,
                                   "gradient_accumulation_steps": t.grad_accum,
                                   "gradient_clipping": t.grad_clip or 0.0, "offload_optimizer_device": "none",
                                   "offload_param_device": "none", "zero3_init_flag": False,
                                   "zero3_save_16bit_model": True,
                                   # several machines: torchrun on each node, like the other strategies (not pdsh)
                                   "deepspeed_multinode_launcher": "standard"}
    return cfg


def write_config(run: Path, spec: Any, *, cuda: bool | None = None, port: int | None = None) -> Path:
    """Write accelerate_config.yaml into the run folder (one machine: on a free port unless one is given)."""
    import yaml  # accelerate's own dependency

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if port is None and spec.distributed.num_machines == 1:
        port = free_port()
    path = Path(run) / CONFIG
    text = "# written by llm-wizard for `accelerate launch --config_file` (see engine/run/distributed/launch.py)\n"
    path.write_text(text + yaml.safe_dump(accelerate_config(spec, cuda=cuda, port=port), sort_keys=False))
    return path


def accelerate_command(run: Path, *, machine_rank: int, resume: bool = False, commands_from: int | None = None,
                       step_sleep: float = 0.0, python: str | None = None) -> list[str]:
    """`accelerate launch --config_file RUN/accelerate_config.yaml --machine_rank N -m engine.run.distributed.worker RUN ...`."""
    run = Path(run)
    cmd = [python or sys.executable, *ACCELERATE, "--config_file", str(run / CONFIG),
           "--machine_rank", str(machine_rank), "-m", WORKER, str(run)]
    if commands_from is not None:
        cmd += ["--commands-from", str(commands_from)]
    if resume:
        cmd.append("--resume")
    if step_sleep:
        cmd += ["--step-sleep", str(step_sleep)]
    return cmd


def node_command(run: Path, machine_rank: int, *, resume: bool = False, python: str | None = None) -> str:
    """The shell line that starts this run's processes on one machine, detached (survives the SSH session)."""
    run = Path(run)
    args = [python or sys.executable, "-m", SUPERVISOR, str(run), "--machine-rank", str(machine_rank)]
    if resume:
        args.append("--resume")
    log = run / (f"job-machine{machine_rank}.log" if machine_rank else "job.log")
    return f"setsid nohup {shlex.join(args)} >> {shlex.quote(str(log))} 2>&1 < /dev/null &"


def launch_plan(run: Path, spec: Any, *, resume: bool = False, started: bool = False) -> str:
    """What `llm-wizard train --print-launch` shows: one exact command per machine, and what they need
    (`started`: machine 0's is being started by this command, so only the others are listed)."""
    d = spec.distributed
    if not is_multi(spec):
        args = [sys.executable, "-m", "engine.run.job", str(run)] + (["--resume"] if resume else [])
        return (f"run {Path(run).name}: one process (no accelerate launch):\n"
                f"setsid nohup {shlex.join(args)} >> {shlex.quote(str(Path(run) / 'job.log'))} 2>&1 < /dev/null &")
    per = d.num_processes // d.num_machines
    lines = [f"run {Path(run).name}: {d.num_processes} processes ({per} per machine, strategy {d.strategy}) "
             f"on {d.num_machines} machine(s), started by `accelerate launch` with {Path(run) / CONFIG}"]
    if d.num_machines > 1:
        lines.append(f"machine 0 ({d.main_process_ip}) hosts the rendezvous on port {d.main_process_port} and "
                     "writes events, status and checkpoints. The run folder must be at this same path on every "
                     "machine (shared storage) and the same Python environment at the same path.")
    for rank in range(1 if started else 0, d.num_machines):
        lines += [f"# machine {rank}:", node_command(run, rank, resume=resume)]
    return "\n".join(lines)
