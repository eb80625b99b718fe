"""The SkyPilot task for any other cloud, a Kubernetes or a Slurm cluster: `sky launch` (a cluster you can SSH into)
or `sky jobs launch` (a managed job that SkyPilot restarts on a new VM when a spot VM is taken back).

The task's setup installs llm-wizard with the README's commands (`git clone`, `make setup`); file_mounts bring the
spec and its local data; the run folder lives on a bucket mounted at RUNS_MOUNT (one folder per task name), so a
run that a preempted VM left behind is continued on the next VM with `llm-wizard train --resume latest` from its
newest checkpoint, and a first start runs `llm-wizard train SPEC`. sky.Task.from_yaml accepts what `task()` returns
(tests/unit/test_cloud_sky.py, where skypilot is installed).
"""

from __future__ import annotations

import shlex
from typing import Any

from engine.cloud.gcloud import check_name
from engine.cloud.payload import Upload, overrides
from engine.cloud.prices import Gpu

WORK = "~/llm-wizard-work"  # file_mounts destinations take `~`
WORK_SHELL = "$HOME/llm-wizard-work"  # the same folder in the run script
RUNS_MOUNT = "/llm-wizard-runs"
INSTALL = "~/llm-wizard"


def task(*, name: str, gpu: Gpu, count: int, spot: bool, bucket: str, repo: str, items: list[Upload],
         extra: list[str] = (), disk_gb: int = 200, cloud: str | None = None, ref: str = "") -> dict[str, Any]:
    """The task YAML as a dict (yaml.safe_dump writes it)."""
    check_name(name)
    runs = f"{RUNS_MOUNT}/{name}"
    sets = " ".join(f'--set "{s}"' for s in [*overrides(items, WORK_SHELL), *extra])  # "": $HOME expands
    cli = f"{INSTALL}/.venv/bin/llm-wizard --runs-dir {runs}"
    checkout = f" && git -C {INSTALL} checkout {shlex.quote(ref)}" if ref else ""
    resources: dict[str, Any] = {"accelerators": f"{gpu.sky}:{count}", "use_spot": spot, "disk_size": disk_gb}
    if cloud:
        resources["cloud"] = cloud
    mounts: dict[str, Any] = {f"{WORK}/{u.remote}": u.local for u in items}
    # MOUNT_CACHED: writes land on the local disk and go up to the bucket behind them (rclone's VFS cache), so the
    # run folder's appends and checkpoint renames run at disk speed; plain MOUNT (gcsfuse) rewrites an object
    # on every append. A VM taken back may lose the last seconds not yet uploaded: the resume takes the newest
    # checkpoint that verifies (engine/checkpoints/store.py).
    mounts[RUNS_MOUNT] = {"name": bucket, "mode": "MOUNT_CACHED"}
    return {
        "name": name,
        "resources": resources,
        "file_mounts": mounts,
        "setup": "\n".join([
            "set -e",
            f"if [ ! -x {INSTALL}/.venv/bin/llm-wizard ]; then",
            f"  git clone {shlex.quote(repo)} {INSTALL}{checkout}",
            f"  make -C {INSTALL} setup",
            "fi",
        ]) + "\n",
        "run": "\n".join([
            "set -e",
            f"mkdir -p {runs}",
            f"if ls {runs}/*/spec.toml >/dev/null 2>&1; then",
            "  # a VM taken back left this run behind: continue it from its newest checkpoint",
            f"  {cli} train --resume latest --foreground",
            "else",
            f"  {cli} train {WORK_SHELL}/spec.toml {sets} --foreground".replace("  --", " --"),
            "fi",
        ]) + "\n",
    }


def launch(path: str, name: str, *, managed: bool, yes: bool, env: tuple[str, ...] = ()) -> list[str]:
    """`sky launch` / `sky jobs launch`; `--env NAME` lets sky read NAME's value from this process's environment,
    so a token never lands in the YAML."""
    argv = ["sky", "jobs", "launch", "-n", name, path] if managed else ["sky", "launch", "-c", name, path]
    for var in env:
        argv += ["--env", var]
    return argv + (["--yes"] if yes else [])


def stop(name: str, *, managed: bool) -> list[str]:
    return ["sky", "jobs", "cancel", "-n", name, "--yes"] if managed else ["sky", "stop", name, "--yes"]


def delete(name: str, *, managed: bool) -> list[str]:
    return ["sky", "jobs", "cancel", "-n", name, "--yes"] if managed else ["sky", "down", name, "--yes"]


def ssh(name: str) -> list[str]:
    return ["ssh", name]  # sky launch writes a Host entry for the cluster into ~/.ssh/config
