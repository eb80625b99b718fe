"""The gcloud command lines of the book's Google Cloud set-up (5.1.1), as argument lists, and the VM's start-up script.

The book's steps, each a builder here: enable the Compute Engine API (`services enable`); find a zone of the region
that has the GPU (`compute accelerator-types list --filter`); create the instance from a Deep Learning VM image
family with the NVIDIA driver (`--metadata=install-nvidia-driver=True`, `--maintenance-policy=TERMINATE`, a
200 GB boot disk, `--scopes=cloud-platform`), on demand or as a Spot VM; `describe` until RUNNING; `compute ssh`;
`compute config-ssh` for VS Code's Remote-SSH; `compute scp` (or rsync over the SSH entry config-ssh writes, or a
`gcloud storage` bucket) for the data and the run folders; `instances stop` / `delete`. Every list is what
tools.run hands to subprocess (no shell); tests/unit/test_cloud_gcloud.py runs each through the real gcloud's
argument parser. A2, A3 and G2 machine types come with their GPUs attached: `--accelerator` is only given for a
general-purpose machine type (N1) that takes a GPU (gcloud rejects a second accelerator on an A2/A3/G2 VM).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from engine.errors import UserError

IMAGE_PROJECT = "deeplearning-platform-release"
# A Deep Learning VM image family with CUDA and Python 3.10 (the book used the dated image
# common-gpu-v20230925-debian-11-py310 of this project); `gcloud compute images list --project
# deeplearning-platform-release --no-standard-images` lists today's, `cloud create --image-family` picks another.
IMAGE_FAMILY = "common-cu124-debian-11-py310"
DISK_GB = 200  # the book's: models and checkpoints are large
LABEL = "created-by=llm-wizard"
MARKER_PATH = "/etc/llm-wizard/vm.json"  # written by the start-up script; engine/cloud/marker.py reads it
INSTALL_DIR = "/opt/llm-wizard"
REMOTE_WORK = "~/llm-wizard-work"  # where `cloud sync --up` puts the spec and its data
REMOTE_RUNS = "~/.local/share/llm-wizard/runs"  # the runs folder llm-wizard uses on the VM (DESIGN: XDG default)
NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Vm:
    """Where a VM is: what every command after `create` needs."""

    name: str
    zone: str
    project: str

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def ssh_host(self) -> str:
        """The Host entry `gcloud compute config-ssh` writes (the book: l4-llm-example.us-west1-a.project-id)."""
        return f"{self.name}.{self.zone}.{self.project}"

    def where(self) -> list[str]:
        return ["--zone", self.zone, "--project", self.project]


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"VM name {name!r}: lower-case letters, digits and hyphens, starting with a letter, "
                        "at most 63 characters (Compute Engine's rule)", field="name")
    return name


def enable_api(project: str) -> list[str]:
    return ["gcloud", "services", "enable", "compute.googleapis.com", "--project", project]


def zones_with(accelerator: str, region: str, project: str) -> list[str]:
    """The zones of `region` that offer the accelerator, one a line. The API gives `zone` as a URL (.../zones/
    us-central1-a): the filter matches its last part either way, the format prints that part alone."""
    return ["gcloud", "compute", "accelerator-types", "list", "--project", project,
            f"--filter=name={accelerator} AND zone~(^|/){region}-[a-z]$", "--format=value(zone.basename())"]


def create(vm: Vm, *, machine_type: str, startup_script: str, spot: bool = False, disk_gb: int = DISK_GB,
           image_family: str = IMAGE_FAMILY, accelerator: tuple[str, int] | None = None) -> list[str]:
    """The book's `instances create`, with the start-up script given as a file (its path)."""
    argv = ["gcloud", "compute", "instances", "create", vm.name, *vm.where(), f"--machine-type={machine_type}",
            f"--image-family={image_family}", f"--image-project={IMAGE_PROJECT}", f"--boot-disk-size={disk_gb}GB",
            "--scopes=cloud-platform", "--metadata=install-nvidia-driver=True,install-unattended-upgrades=False",
            f"--metadata-from-file=startup-script={startup_script}", f"--labels={LABEL}",
            "--maintenance-policy=TERMINATE"]
    if accelerator is not None:
        argv.append(f"--accelerator=type={accelerator[0]},count={accelerator[1]}")
    if spot:  # stopped, not deleted, when Google takes it back: the disk (and the run folder) stays
        argv += ["--provisioning-model=SPOT", "--instance-termination-action=STOP", "--no-restart-on-failure"]
    else:
        argv.append("--restart-on-failure")
    return argv


def status(vm: Vm) -> list[str]:
    return ["gcloud", "compute", "instances", "describe", vm.name, *vm.where(), "--format=value(status)"]


def config_ssh(project: str) -> list[str]:
    return ["gcloud", "compute", "config-ssh", "--project", project]


def ssh(vm: Vm, command: str | None = None) -> list[str]:
    return ["gcloud", "compute", "ssh", vm.name, *vm.where(), *([f"--command={command}"] if command else [])]


def scp_up(vm: Vm, local: str, remote: str) -> list[str]:
    return ["gcloud", "compute", "scp", "--recurse", *vm.where(), local, f"{vm.name}:{remote}"]


def scp_down(vm: Vm, remote: str, local: str) -> list[str]:
    return ["gcloud", "compute", "scp", "--recurse", *vm.where(), f"{vm.name}:{remote}", local]


def rsync_up(vm: Vm, local: str, remote: str) -> list[str]:
    """Over the SSH entry that config-ssh wrote: only what changed is sent (needs rsync on both sides)."""
    return ["rsync", "-az", "--partial", local, f"{vm.ssh_host}:{remote}"]


def rsync_down(vm: Vm, remote: str, local: str) -> list[str]:
    return ["rsync", "-az", "--partial", f"{vm.ssh_host}:{remote}", local]


def storage_rsync(source: str, destination: str) -> list[str]:
    """A bucket between the laptop and the VM (`gs://bucket/path` on either side); the VM's cloud-platform scope
    lets it run the same command without any key copied to it."""
    return ["gcloud", "storage", "rsync", "--recursive", source, destination]


def stop(vm: Vm) -> list[str]:
    return ["gcloud", "compute", "instances", "stop", vm.name, *vm.where()]


def delete(vm: Vm) -> list[str]:
    return ["gcloud", "compute", "instances", "delete", vm.name, *vm.where(), "--quiet"]


def startup_script(vm: Vm, *, repo: str, ref: str = "") -> str:
    """Run as root at every boot: the marker that says this product created the VM (read at the end of a run to
    offer stop/delete), then, once, llm-wizard installed with the README's commands (`git clone`, `make setup`)
    into /opt/llm-wizard, on PATH for every user. It holds no credential: the VM's own service account (scope
    cloud-platform) is what gcloud uses there."""
    marker = json.dumps({"created_by": "llm-wizard cloud create", "provider": "gcp", "name": vm.name,
                         "zone": vm.zone, "project": vm.project}, sort_keys=True)
    checkout = f" && git -C {INSTALL_DIR} checkout {shlex.quote(ref)}" if ref else ""
    return "\n".join([
        "#!/bin/bash",
        "# llm-wizard cloud create: the VM's start-up script (runs as root at every boot)",
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(MARKER_PATH.rsplit('/', 1)[0])}",
        f"printf '%s\\n' {shlex.quote(marker)} > {MARKER_PATH}",
        f"if [ ! -x {INSTALL_DIR}/.venv/bin/llm-wizard ]; then",
        "  [ -d /opt/conda/bin ] && export PATH=/opt/conda/bin:$PATH  # the image's Python 3.10",
        "  # the image installs the driver on the first boot, beside this script: `make setup` picks a CUDA torch",
        "  # only once nvidia-smi answers, so wait for it (15 minutes at most)",
        "  for _ in $(seq 1 90); do nvidia-smi -L >/dev/null 2>&1 && break; sleep 10; done",
        "  command -v git >/dev/null || (apt-get update -q && apt-get install -y -q git make rsync)",
        f"  rm -rf {INSTALL_DIR} && git clone {shlex.quote(repo)} {INSTALL_DIR}{checkout}",
        f"  make -C {INSTALL_DIR} setup",  # the README's set-up: a .venv with torch (CUDA build) and the project
        f"  chmod -R a+rX {INSTALL_DIR}",
        f"  ln -sf {INSTALL_DIR}/.venv/bin/llm-wizard /usr/local/bin/llm-wizard",
        "fi",
        "",
    ])


def shown(argv: list[str]) -> str:
    """A command as a person would type it (for --dry-run and the confirmation)."""
    return shlex.join(argv)
