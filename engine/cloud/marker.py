"""The VMs this product created, seen from both ends.

On the VM: the start-up script (engine/cloud/gcloud.py) writes /etc/llm-wizard/vm.json with the VM's name, zone and
project. When a run ends on such a VM, its notification and `attach` add the line `vm_hint()` returns, offering
`cloud stop` / `cloud delete` (run from the laptop) or a power-off from the VM, so an idle GPU is not left running.
On the laptop: `cloud create` records each VM (provider, name, zone, project, machine, price) under
$XDG_CONFIG_HOME/llm-wizard/cloud/, which `cloud ssh|sync|stop|delete NAME` read. Neither file holds a credential.
Light on purpose: the notifications import it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER_ENV = "LLM_WIZARD_VM_MARKER"  # another marker path (tests)
MARKER_PATH = "/etc/llm-wizard/vm.json"  # engine/cloud/gcloud.py MARKER_PATH writes it there


@dataclass(frozen=True)
class Record:
    provider: str  # gcp | sky
    name: str
    zone: str = ""
    project: str = ""
    machine_type: str = ""
    gpu: str = ""
    count: int = 0
    spot: bool = False
    price_hour: float = 0.0
    created: str = ""
    managed: bool = False  # sky: a managed job (`sky jobs launch`) rather than a cluster


def vm_marker() -> dict[str, Any] | None:
    """The marker of the VM this process runs on, or None when it was not created by `cloud create`."""
    path = Path(os.environ.get(MARKER_ENV) or MARKER_PATH)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("name") else None


def vm_hint() -> str | None:
    """One line for the end of a run on a VM this product created; None elsewhere."""
    m = vm_marker()
    if m is None:
        return None
    name = str(m["name"])
    return (f"this VM ({name}) still costs money while it runs: from your laptop `llm-wizard cloud sync {name} "
            f"--down RUN` fetches the results, then `llm-wizard cloud stop {name}` (keeps the disk) or "
            f"`llm-wizard cloud delete {name}`; or `sudo poweroff` here stops it")


def records_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llm-wizard" / "cloud"


def save(record: Record) -> Path:
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load(name: str) -> Record | None:
    try:
        data = json.loads((records_dir() / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    known = set(Record.__dataclass_fields__)
    return Record(**{k: v for k, v in data.items() if k in known})


def forget(name: str) -> None:
    (records_dir() / f"{name}.json").unlink(missing_ok=True)


def records() -> list[Record]:
    folder = records_dir()
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    return [r for r in (load(n) for n in names) if r is not None]
