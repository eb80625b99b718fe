"""Several machines in the wizard: machine 0's address, the run folder picked before it exists, and the
exact command each machine runs (engine/run/distributed/launch.py's `launch_plan`, split into its prose and its
command lines so that the screens can wrap the one and keep the other on one line each).

The spec's `distributed.num_processes` is the total over every machine (engine/spec.py); the wizard's
"GPUs (processes)" is per machine, and every machine runs that many (`Choices.world()` is the total).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> str | None:
    """Why `host` is no IP address or host name (None: it is one)."""
    if not host:
        return "give machine 0's IP address or host name"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.rstrip(".").split(".")):
        return f"{host!r} is neither an IP address nor a host name"
    if host.replace(".", "").isdigit():
        return f"{host!r} is not a valid IPv4 address"
    return None


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address -> (host, port); ValueError says why not."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0:
            raise ValueError("an IPv6 address in brackets needs its closing ]")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after the address")
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
    if why := check_host(host):
        raise ValueError(why)
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"not a TCP port: {text!r}")
    return int(text)


def shown_address(host: str, port: int) -> str:
    if not host:
        return "not set"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def planned_run(runs_root: Path, name: str) -> Path:
    """The folder the run will get (absolute: every machine is given this path), picked now so that the
    commands shown before launch are the ones that will work; engine.run.job.create(run_id=) makes it."""
    from engine.runfolder import folder as runfolder

    return Path(runs_root).expanduser().absolute() / runfolder.new_run_id(name)


@dataclass(frozen=True)
class Plan:
    about: list[str]  # launch_plan's prose (wrapped on screen)
    commands: list[str]  # `# machine N:` and its command, each one line (never wrapped)


def node_plan(run: Path, spec: Any, *, started: bool = False) -> Plan:
    """launch_plan's text, split where the per-machine lines begin."""
    from engine.run.distributed.launch import launch_plan

    lines = launch_plan(run, spec, started=started).splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("# machine")), len(lines))
    return Plan(lines[:first], lines[first:])


SHARED = ("The run folder must be on storage every machine sees at this same path, with the same Python "
          "environment at the same path; machine 0 (this one) hosts the rendezvous.")


def join_plan(run: Path) -> Plan | None:
    """For a run of several machines: the commands of the machines other than 0 (what the dashboard shows
    until they have joined); None for a run on one machine or a spec that cannot be read."""
    from engine.runfolder import folder as runfolder
    from engine.errors import UserError
    from engine.spec import load

    try:
        spec = load(Path(run) / runfolder.SPEC)
    except (UserError, OSError, ValueError):
        return None
    if spec.distributed.num_machines < 2:
        return None
    return node_plan(Path(run), spec, started=True)
