"""Issue 7 without starting processes: the [distributed] spec section, the accelerate config, the
per-machine commands of `train --print-launch`, and naming the rank that died from the agent's summary."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from engine import spec

from engine.run.distributed import launch as launch_config
from engine.run.distributed.supervisor import RankFailure, first_failure, parse_failures
from engine.errors import UserError
from run_helpers import make_corpus, tiny_spec

SUMMARY = """
============================================================
engine.run.distributed.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-29_02:57:48
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 9118)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_02:57:48
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 9119)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 9119
============================================================
"""


def test_distributed_section_validates(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=10)
    s = tiny_spec(corpus, distributed={"num_processes": 4, "num_machines": 2, "main_process_ip": "10.0.0.1"})
    assert s.distributed.num_processes == 4 and launch_config.is_multi(s)
    text = spec.to_toml(s)
    assert tomllib.loads(text)["distributed"]["main_process_ip"] == "10.0.0.1"
    assert "[distributed]" not in spec.to_toml(tiny_spec(corpus))  # one process: the spec reads as before
    assert s.fingerprint() == tiny_spec(corpus).fingerprint()  # a DDP checkpoint resumes on any layout
    bad = [({"num_processes": 3, "num_machines": 2, "main_process_ip": "h"}, "num_processes"),
           ({"num_processes": 2, "num_machines": 2}, "main_process_ip"),
           ({"num_machines": 1, "machine_rank": 1}, "machine_rank"),
           ({"strategy": "fsdp2"}, "strategy"), ({"main_process_port": 70000}, "main_process_port"),
           ({"num_processes": 0}, "num_processes")]
    for d, name in bad:
        with pytest.raises(UserError) as e:
            tiny_spec(corpus, distributed=d)
        assert e.value.field == f"distributed.{name}", (d, e.value)
    if importlib.util.find_spec("deepspeed") is None:  # the optional extra; tests/e2e/test_zero_runs.py covers both
        with pytest.raises(UserError, match="DeepSpeed, which is not installed"):
            launch_config.check_supported(tiny_spec(corpus, distributed={"num_processes": 2, "strategy": "zero3"}))


def test_unsupported_strategies_refused_before_launch(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=10)
    fsdp = tiny_spec(corpus, distributed={"num_processes": 2, "strategy": "fsdp"})
    with pytest.raises(UserError, match="fsdp needs CUDA GPUs"):  # accelerate runs FSDP only on accelerators
        launch_config.check_supported(fsdp, cuda=False)
    launch_config.check_supported(fsdp, cuda=True)  # sharded checkpoints: engine/checkpoints/fsdp.py
    launch_config.check_supported(tiny_spec(corpus, distributed={"num_processes": 2}))
    launch_config.check_supported(tiny_spec(corpus, distributed={"strategy": "fsdp"}))  # one process: unused


def test_accelerate_config_per_strategy(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=10)
    s = tiny_spec(corpus, distributed={"num_processes": 2}, train={"precision": "bf16"})
    path = launch_config.write_config(tmp_path, s, cuda=False)
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["use_cpu"] is True and cfg["num_processes"] == 2
    assert cfg["mixed_precision"] == "bf16" and cfg["main_process_port"] != 29500  # a free port on one machine
    assert "main_process_ip" not in cfg
    multi = tiny_spec(corpus, distributed={"num_processes": 16, "num_machines": 2, "main_process_ip": "10.1.2.3",
                                           "strategy": "fsdp"})
    cfg = launch_config.accelerate_config(multi, cuda=True)
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    assert cfg["main_process_ip"] == "10.1.2.3" and cfg["main_process_port"] == 29500 and cfg["gpu_ids"] == "all"
    zero = spec.DistributedSpec.__new__(spec.DistributedSpec)  # zero3 without DeepSpeed installed: built unvalidated
    zero.__dict__.update({**multi.distributed.__dict__, "strategy": "zero3"})
    multi.distributed = zero
    cfg = launch_config.accelerate_config(multi, cuda=True)
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == 3


def test_commands_go_through_accelerate_launch(tmp_path: Path) -> None:
    cmd = launch_config.accelerate_command(tmp_path, machine_rank=1, resume=True, commands_from=7)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / launch_config.CONFIG)
    assert cmd[cmd.index("--machine_rank") + 1] == "1" and cmd[cmd.index("-m", 3) + 1] == "engine.run.distributed.worker"
    assert cmd[-3:] == ["--commands-from", "7", "--resume"]
    (tmp_path / "spec.toml").write_text("[distributed]\nnum_processes = 2\n")
    assert launch_config.job_module(tmp_path) == "engine.run.distributed.supervisor"
    (tmp_path / "spec.toml").write_text("[train]\nlr = 1e-3\n")
    assert launch_config.job_module(tmp_path) == "engine.run.job"


def test_print_launch_shows_each_machine(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=50)
    spec_file = tmp_path / "spec.toml"
    s = tiny_spec(corpus, distributed={"num_processes": 16, "num_machines": 2, "main_process_ip": "10.0.0.5"})
    spec_file.write_text(spec.to_toml(s))
    runs = tmp_path / "runs"
    p = subprocess.run([sys.executable, "-m", "tui.cli", "--runs-dir", str(runs), "train", str(spec_file),
                        "--print-launch"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (run,) = runs.iterdir()
    lines = p.stdout.splitlines()
    nodes = [line for line in lines if line.startswith("setsid nohup")]
    assert len(nodes) == 2 and "--machine-rank 0" in nodes[0] and "--machine-rank 1" in nodes[1]
    assert all(f"-m engine.run.distributed.supervisor {run}" in n for n in nodes) and "job-machine1.log" in nodes[1]
    assert "16 processes (8 per machine" in p.stdout and "shared storage" in p.stdout
    cfg = yaml.safe_load((run / launch_config.CONFIG).read_text())
    assert cfg["num_machines"] == 2 and cfg["main_process_ip"] == "10.0.0.5"
    assert not (run / "status.json").exists()  # nothing started
    p = subprocess.run([sys.executable, "-m", "tui.cli", "--runs-dir", str(runs), "train", str(spec_file),
                        "--set", "distributed.strategy=fsdp"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "distributed.strategy" in p.stderr and len(list(runs.iterdir())) == 1


def test_the_rank_that_died_is_named() -> None:
    failures = parse_failures(SUMMARY)
    assert [(f.rank, f.exitcode, f.root_cause) for f in failures] == [(0, 1, False), (1, -9, True)]
    died = first_failure(failures)
    assert died is not None and died.rank == 1 and died.describe() == "rank 1 (local rank 1, pid 9119) killed by SIGKILL"
    # the survivors' SIGTERM comes from the agent: the rank that exited on its own is the cause
    assert first_failure([RankFailure(0, 0, -15, 5, False), RankFailure(1, 1, 2, 6, True)]).rank == 1
    assert first_failure([]) is None


def test_wizard_choice_of_gpus_reaches_spec_and_estimate() -> None:
    from engine.estimate.memory import estimate
    from tui.wizard import Choices, estimate_request, spec_dict

    one, two = Choices(), Choices(num_processes=2)
    # one process is estimated as one, also on a machine with several GPUs (not as DDP over all of them)
    assert "distributed" not in spec_dict(one) and estimate_request(one).gpus == 1
    s = spec.from_dict(spec_dict(two))
    assert s.distributed.num_processes == 2 and s.distributed.strategy == "ddp"
    req = estimate_request(two)
    assert req.gpus == 2 and req.strategy == "ddp"
    gpus = [(0, "L4", 24 << 30), (1, "L4", 24 << 30)]
    # DDP keeps a full copy on each GPU plus its gradient buckets: more per GPU than one process
    assert estimate(req, gpus=gpus, with_suggestions=False).total_bytes > \
        estimate(estimate_request(one), gpus=gpus[:1], with_suggestions=False).total_bytes
