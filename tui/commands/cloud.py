"""`llm-wizard cloud`: plan, create, ssh, sync, stop, delete a GPU VM (gcloud, after the book's 5.1.1; SkyPilot for
any other cloud or cluster). Nothing is created without a confirmation that shows the price (`--yes` for scripts);
`--dry-run` prints the exact commands and runs none. The logic is engine/cloud's; this module asks and prints.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HELP = "plan, create, ssh, sync, stop, delete a GPU VM (Google Cloud via gcloud; any cloud via SkyPilot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cloud_command", metavar="ACTION", required=True)

    def machine(p: argparse.ArgumentParser) -> None:
        p.add_argument("spec", help="the run spec (TOML)")
        p.add_argument("--provider", choices=("gcp", "sky"), default="gcp", help="gcloud (default) or SkyPilot")
        p.add_argument("--gpu", action="append", default=[], metavar="GPU", help="l4 | a100 | h100 (repeatable; "
                       "default: every one in the price table)")
        p.add_argument("--count", type=int, help="GPUs on the machine (default: every count in the table)")
        p.add_argument("--region", help="price and create in this region (default us-central1)")
        p.add_argument("--spot", action="store_true", help="a Spot VM: 60-90%% cheaper, may be taken back")
        p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation for the run time (default 0.35)")
        p.add_argument("--tokens", type=int, help="tokens the run trains on (default: from the spec)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec setting (repeatable)")

    p = sub.add_parser("plan", help="the GPU machine that fits the spec, its price, run time, cost and commands")
    machine(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("create", help="create the VM the plan chose (asks first, showing the price)")
    machine(p)
    p.add_argument("--name", help="the VM's name (default llmw-<the spec file's name>, e.g. llmw-full-llama2-13b)")
    p.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
    p.add_argument("--zone", help="zone (default: the first of the region that has the GPU)")
    p.add_argument("--disk-gb", type=int, default=200, help="boot disk in GB (default 200, the book's)")
    p.add_argument("--image-family", help="Deep Learning VM image family (default common-cu124-debian-11-py310)")
    p.add_argument("--repo", help="the llm-wizard git repository the VM clones (default: this checkout's origin)")
    p.add_argument("--ref", default="", help="a branch, tag or commit of --repo")
    p.add_argument("--bucket", help="sky: the bucket the run folder lives on (default llm-wizard-<name>)")
    p.add_argument("--managed", action="store_true", help="sky: a managed job (`sky jobs launch`): a spot VM taken "
                   "back is replaced and the run resumes")
    p.add_argument("--cloud", help="sky: pin a cloud (gcp, aws, azure, kubernetes...); default: SkyPilot picks")
    confirm(p)
    p = sub.add_parser("ssh", help="SSH into the VM (writes the SSH config entry VS Code's Remote-SSH uses)")
    p.add_argument("name")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    p = sub.add_parser("sync", help="send a spec and its data up (--up SPEC), or fetch a run folder back (--down RUN)")
    p.add_argument("name")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--up", metavar="SPEC", help="the spec whose file, data and local model go to the VM")
    way.add_argument("--down", metavar="RUN", help="a run id on the VM ('all': every run) to fetch here")
    p.add_argument("--method", choices=("scp", "rsync", "bucket"), default="scp",
                   help="gcloud compute scp (default), rsync over the config-ssh entry, or a gcloud storage bucket")
    p.add_argument("--bucket", metavar="gs://BUCKET/PATH", help="--method bucket: the bucket folder between")
    p.add_argument("--dest", default="cloud-runs", help="--down: the local folder (default ./cloud-runs)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    for action, what in (("stop", "stop the VM: no GPU billed, the disk kept (and billed)"),
                         ("delete", "delete the VM and its disk (fetch the results first: sync --down)")):
        p = sub.add_parser(action, help=what)
        p.add_argument("name")
        confirm(p)


def confirm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", "-y", action="store_true", help="do not ask (scripts)")
    p.add_argument("--dry-run", action="store_true", help="print the exact commands, run none")


def run(args: argparse.Namespace) -> int:
    return {"plan": plan_cmd, "create": create_cmd, "ssh": ssh_cmd, "sync": sync_cmd, "stop": end_cmd,
            "delete": end_cmd}[args.cloud_command](args)


# --- plan -----------------------------------------------------------------------------------------------------

def make_plan(args: argparse.Namespace) -> tuple[Any, Any]:
    from engine import spec as spec_mod
    from engine.cloud.plan import DEFAULT_MFU, plan

    spec = spec_mod.load(args.spec, args.overrides)
    return spec, plan(spec, spec_name=args.spec, gpus=tuple(g.lower() for g in args.gpu), count=args.count,
                      region=args.region, spot=args.spot, mfu=args.mfu or DEFAULT_MFU, tokens=args.tokens)


def plan_cmd(args: argparse.Namespace) -> int:
    from tui.output import print_json

    spec, p = make_plan(args)
    if args.json:
        print_json(p.to_dict())
        return 0
    render_plan(p)
    if p.chosen is not None:
        from tui.output import out

        out().print("\n[bold]The commands `cloud create` would run[/] (`cloud create --dry-run` prints them exactly):")
        for line in commands_for(args, p, name=default_name(args), project="PROJECT", zone="ZONE"):
            print(f"  {line}")  # plain: a command stays one line to copy
    return 0


def render_plan(p: Any) -> None:
    from rich.table import Table

    from engine.cloud.plan import duration
    from engine.estimate.layout import NAMES
    from tui.output import out

    c = out()
    c.print(f"[bold]{p.model}[/]: {p.params / 1e9:.2f}B parameters, {p.trainable_params / 1e6:,.1f}M trained; "
            f"{p.flops_per_token / 1e9:.2f} GFLOPs a token")
    c.print(f"tokens: {p.tokens_source}; run time at MFU {p.mfu:.2f} of the GPU's dense BF16 peak")
    where = sorted({o.region for o in p.options})
    t = Table(title=f"GPU machines in {', '.join(where)} (prices of {p.prices_date}, USD, "
                    f"{'spot' if p.spot else 'on demand'}; * chosen)", title_justify="left")
    cols = ("machine", *(("region",) if len(where) > 1 else ()), "layout", "GiB/GPU", "fits", "$/h", "time", "cost")
    for col in cols:
        t.add_column(col, justify="right" if col in ("GiB/GPU", "$/h", "time", "cost") else "left", no_wrap=True)
    for o in p.options:
        mark = "*" if o is p.chosen else " "
        t.add_row(f"{mark}{o.count}x {o.gpu.upper()} {o.machine_type}", *((o.region,) if len(where) > 1 else ()),
                  NAMES.get(o.strategy, o.strategy),
                  f"{o.per_gpu_bytes / 2**30:.0f}/{o.gpu_bytes / 2**30:.0f}", o.verdict,
                  f"{o.price_hour:.2f}" + ("s" if o.spot and not p.spot else ""), duration(o.seconds),
                  "" if o.cost is None else f"{o.cost:,.0f}" if o.cost >= 10 else f"{o.cost:,.2f}")
    c.print(t)
    c.print(f"[dim]prices: {p.prices_source}; s: a Spot VM only; a stopped VM still pays for its disk[/]")
    if p.chosen is not None:
        o = p.chosen
        c.print(f"[bold green]chosen[/]: {o.count}x {o.gpu.upper()} ({o.machine_type}, {o.region}, "
                f"{NAMES.get(o.strategy, o.strategy)}): ${o.price_hour:.2f}/h, {duration(o.seconds)}"
                + (f", about ${o.cost:,.2f}" if o.cost is not None else ""))
    if p.fastest is not None and p.fastest is not p.chosen:
        f = p.fastest
        c.print(f"fastest: {f.count}x {f.gpu.upper()} ({f.machine_type}): ${f.price_hour:.2f}/h, {duration(f.seconds)}"
                + (f", about ${f.cost:,.2f}" if f.cost is not None else ""))
    for note in p.notes:
        c.print(f"[dim]note: {note}[/]")


# --- create -----------------------------------------------------------------------------------------------------

def default_name(args: argparse.Namespace) -> str:
    from engine.cloud.gcloud import check_name

    if getattr(args, "name", None):
        return check_name(args.name)
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(args.spec).stem.lower()).strip("-")
    return check_name(f"llmw-{stem}"[:63].rstrip("-"))


def default_repo() -> str:
    import subprocess

    from engine.errors import UserError

    root = Path(__file__).resolve().parents[2]
    try:
        url = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True,
                             check=False).stdout.strip()
    except OSError:
        url = ""
    if not url or "@" in url.split("://")[-1].split("/")[0]:  # no remote, or one with a user:token in it
        raise UserError("which repository should the VM clone llm-wizard from? pass --repo URL", field="repo")
    return url


def commands_for(args: argparse.Namespace, p: Any, *, name: str, project: str, zone: str,
                 script: str = "STARTUP_SCRIPT.sh", yaml_path: str = "TASK.yaml") -> list[str]:
    """The command lines `cloud create` runs for this plan, as a person would type them."""
    import os

    from engine.cloud import gcloud, prices, sky

    o = p.chosen
    if getattr(args, "provider", "gcp") == "sky":
        env = ("HF_TOKEN",) if "HF_TOKEN" in os.environ else ()
        return [gcloud.shown(sky.launch(yaml_path, name, managed=getattr(args, "managed", False),
                                        yes=getattr(args, "yes", False), env=env))]
    vm = gcloud.Vm(name, zone, project)
    return [gcloud.shown(c) for c in (
        gcloud.enable_api(project), gcloud.zones_with(prices.GPUS[o.gpu].gcp, o.region, project),
        gcloud.create(vm, machine_type=o.machine_type, startup_script=script, spot=o.spot,
                      disk_gb=getattr(args, "disk_gb", gcloud.DISK_GB),
                      image_family=getattr(args, "image_family", None) or gcloud.IMAGE_FAMILY),
        gcloud.status(vm), gcloud.config_ssh(project))]


def ask(question: str, yes: bool) -> None:
    from engine.errors import UserError

    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError("not a terminal, so nothing to confirm with: pass --yes to go ahead", field="yes")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise UserError("nothing done", field="yes", exit_code=1)


def create_cmd(args: argparse.Namespace) -> int:
    from engine.cloud import gcloud, marker, prices, tools
    from engine.cloud.plan import duration
    from engine.errors import UserError
    from tui.output import out

    if args.provider == "sky" and args.managed:
        args.spot = True  # a managed job is what makes spot safe: price it as spot
    spec, p = make_plan(args)
    o = p.chosen
    if o is None:
        render_plan(p)
        raise UserError("no machine in the price table fits this run: see the plan above", field="gpu")
    name = default_name(args)
    try:
        repo = args.repo or default_repo()
    except UserError:
        if not args.dry_run:
            raise
        repo = "REPO_URL"  # a dry run shows where the URL goes
    c = out()
    price = (f"{o.count}x {o.gpu.upper()} on {o.machine_type} in {o.region}, {'spot' if o.spot else 'on demand'}: "
             f"${o.price_hour:.2f} an hour (prices of {p.prices_date})")
    run_time = f"; the run: about {duration(o.seconds)}" + (f", ${o.cost:,.2f}" if o.cost is not None else "")
    if args.provider == "sky":
        return create_sky(args, spec, p, name, repo, price + run_time)
    if args.dry_run:  # placeholders for what only gcloud (logged in) can say
        configured = tools.gcloud_value("core/project") if _has("gcloud") else ""
        project = args.project or configured or "PROJECT"
    else:
        project = args.project or tools.default_project()
    zone = args.zone or ("ZONE" if args.dry_run else "")
    if args.dry_run:
        c.print(f"[dim]{price}{run_time}[/]")
        for line in commands_for(args, p, name=name, project=project, zone=zone or "ZONE"):
            print(line)
        print(f"# STARTUP_SCRIPT.sh:\n{gcloud.startup_script(gcloud.Vm(name, zone or 'ZONE', project), repo=repo, ref=args.ref)}")
        return 0
    account = tools.check_login()
    ask(f"Create VM {name} as {account}: {price}{run_time}. A stopped VM still pays for its {args.disk_gb} GB "
        "disk. Create it?", args.yes)
    tools.run(gcloud.enable_api(project))
    if not zone:
        listed = tools.run(gcloud.zones_with(prices.GPUS[o.gpu].gcp, o.region, project)).stdout.split()
        if not listed:
            raise UserError(f"no zone of {o.region} offers {o.gpu.upper()} to this project: try --region "
                            f"({', '.join(prices.regions())})", field="region")
        zone = sorted(listed)[0]
    vm = gcloud.Vm(name, zone, project)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llmw-cloud-") as tmp:
        script = Path(tmp) / "startup.sh"
        script.write_text(gcloud.startup_script(vm, repo=repo, ref=args.ref), encoding="utf-8")
        tools.run(gcloud.create(vm, machine_type=o.machine_type, startup_script=str(script), spot=o.spot,
                                disk_gb=args.disk_gb, image_family=args.image_family or gcloud.IMAGE_FAMILY),
                  capture=False)
    marker.save(marker.Record("gcp", name, zone, project, o.machine_type, o.gpu, o.count, o.spot, o.price_hour,
                              datetime.now(timezone.utc).isoformat(timespec="seconds")))
    c.print(f"created [bold]{name}[/] in {zone}; the start-up script installs llm-wizard (a few minutes).\n"
            f"  reach it:  llm-wizard cloud ssh {name}\n"
            f"  send data: llm-wizard cloud sync {name} --up {args.spec}\n"
            f"  fetch:     llm-wizard cloud sync {name} --down RUN\n"
            f"  stop paying: llm-wizard cloud stop {name}  |  llm-wizard cloud delete {name}")
    return 0


def create_sky(args: argparse.Namespace, spec: Any, p: Any, name: str, repo: str, price: str) -> int:
    import os

    import yaml

    from engine.cloud import marker, prices, sky, tools
    from engine.cloud.payload import uploads
    from tui.output import out

    o = p.chosen
    task = sky.task(name=name, gpu=prices.GPUS[o.gpu], count=o.count, spot=o.spot,
                    bucket=args.bucket or f"llm-wizard-{name}", repo=repo, items=uploads(spec, args.spec),
                    extra=p.overrides(), disk_gb=args.disk_gb, cloud=args.cloud, ref=args.ref)
    path = marker.records_dir() / f"{name}.sky.yaml"
    text = yaml.safe_dump(task, sort_keys=False)
    env = ("HF_TOKEN",) if "HF_TOKEN" in os.environ else ()
    argv = sky.launch(str(path), name, managed=args.managed, yes=args.yes, env=env)
    if args.dry_run:
        print(f"# {path}:\n{text}")
        print(" ".join(argv))
        return 0
    tools.find("sky")
    ask(f"Launch {name} through SkyPilot: {price} on Google Cloud (SkyPilot shows the price of the cloud it picks "
        "before it starts). Go on?", args.yes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    marker.save(marker.Record("sky", name, machine_type=f"{o.gpu.upper()}:{o.count}", gpu=o.gpu, count=o.count,
                              spot=o.spot, price_hour=o.price_hour, managed=args.managed,
                              created=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    tools.run(argv, capture=False)
    out().print(f"stop paying: llm-wizard cloud {'delete' if args.managed else 'stop'} {name}")
    return 0


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


# --- ssh, sync, stop, delete ------------------------------------------------------------------------------------

def record_for(name: str) -> Any:
    from engine.cloud import marker
    from engine.errors import UserError

    rec = marker.load(name)
    if rec is None:
        known = ", ".join(r.name for r in marker.records()) or "none"
        raise UserError(f"no VM {name!r} created by `llm-wizard cloud create` here (known: {known})", field="name")
    return rec


def _do(argv: list[str], dry: bool, *, capture: bool = True) -> None:
    from engine.cloud import gcloud, tools

    if dry:
        print(gcloud.shown(argv))
    else:
        tools.run(argv, capture=capture)


def ssh_cmd(args: argparse.Namespace) -> int:
    from engine.cloud import gcloud, sky
    from tui.output import err

    rec = record_for(args.name)
    if rec.provider == "sky":
        _do(sky.ssh(rec.name), args.dry_run, capture=False)
        return 0
    vm = gcloud.Vm(rec.name, rec.zone, rec.project)
    _do(gcloud.config_ssh(rec.project), args.dry_run)
    err().print(f"[dim]VS Code: F1 -> Remote-SSH: Connect to Host... -> {vm.ssh_host} (the entry `gcloud compute "
                "config-ssh` wrote)[/]")
    _do(gcloud.ssh(vm), args.dry_run, capture=False)
    return 0


def sync_cmd(args: argparse.Namespace) -> int:
    from engine import spec as spec_mod
    from engine.cloud import gcloud
    from engine.cloud.payload import overrides, uploads
    from engine.errors import UserError
    from tui.output import out

    rec = record_for(args.name)
    if rec.provider == "sky":
        raise UserError("a SkyPilot task syncs through its file_mounts and bucket: `sky rsync-down` / the bucket "
                        "hold the runs", field="name")
    vm = gcloud.Vm(rec.name, rec.zone, rec.project)
    if args.method == "bucket" and not (args.bucket or "").startswith("gs://"):
        raise UserError("--method bucket needs --bucket gs://BUCKET/PATH", field="bucket")
    if args.down:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", args.down) or args.down.startswith("."):
            raise UserError(f"--down takes a run id (as `llm-wizard runs` shows it on the VM) or all, got {args.down!r}",
                            field="down")
        remote = gcloud.REMOTE_RUNS + ("" if args.down == "all" else f"/{args.down}")
        if not args.dry_run:
            Path(args.dest).mkdir(parents=True, exist_ok=True)
        if args.method == "rsync":
            _do(gcloud.rsync_down(vm, remote, args.dest), args.dry_run)
        elif args.method == "bucket":
            # on the VM's shell: `~` must stay unquoted to expand (remote is built from checked parts only)
            suffix = "" if args.down == "all" else f"/{args.down}"  # the run keeps its folder on both sides
            up = gcloud.storage_rsync(remote, f"{args.bucket}/runs{suffix}")
            _do(gcloud.ssh(vm, " ".join([*up[:-1], shlex.quote(up[-1])])), args.dry_run)
            _do(gcloud.storage_rsync(f"{args.bucket}/runs{suffix}", f"{args.dest}{suffix}"), args.dry_run)
        else:
            _do(gcloud.scp_down(vm, remote, args.dest), args.dry_run)
        return 0
    spec = spec_mod.load(args.up)
    items = uploads(spec, args.up)
    work = gcloud.REMOTE_WORK
    _do(gcloud.ssh(vm, f"mkdir -p {work}/data {work}/model {work}/tokenizer"), args.dry_run)
    for u in items:
        if args.method == "rsync":
            _do(gcloud.rsync_up(vm, u.local, f"{work}/{u.remote}"), args.dry_run)
        elif args.method == "bucket":
            _do(gcloud.storage_rsync(u.local, f"{args.bucket}/{u.remote}") if Path(u.local).is_dir() else
                ["gcloud", "storage", "cp", u.local, f"{args.bucket}/{u.remote}"], args.dry_run)
            _do(gcloud.ssh(vm, f"gcloud storage cp --recursive {shlex.quote(f'{args.bucket}/{u.remote}')} "
                                f"{work}/{u.remote}"), args.dry_run)
        else:
            _do(gcloud.scp_up(vm, u.local, f"{work}/{u.remote}"), args.dry_run)
    sets = " ".join(f'--set "{o}"' for o in overrides(items, "$HOME/llm-wizard-work"))
    out().print(f"on the VM (`llm-wizard cloud ssh {vm.name}`): llm-wizard train $HOME/llm-wizard-work/spec.toml "
                f"{sets}".rstrip(), markup=False, highlight=False)
    return 0


def end_cmd(args: argparse.Namespace) -> int:
    from engine.cloud import gcloud, marker, sky
    from tui.output import out

    rec = record_for(args.name)
    deleting = args.cloud_command == "delete"
    if rec.provider == "sky":
        argv = (sky.delete if deleting else sky.stop)(rec.name, managed=rec.managed)
    else:
        vm = gcloud.Vm(rec.name, rec.zone, rec.project)
        argv = gcloud.delete(vm) if deleting else gcloud.stop(vm)
    if args.dry_run:
        print(gcloud.shown(argv))
        return 0
    if deleting:
        ask(f"Delete {rec.name} and its disk (every run folder on it)? Fetch results first with "
            f"`llm-wizard cloud sync {rec.name} --down all`.", args.yes)
    _do(argv, False, capture=False)
    if deleting:
        marker.forget(rec.name)
    out().print(f"{rec.name}: {'deleted' if deleting else 'stopped (the disk is kept and billed; `gcloud compute instances start` brings it back)'}")
    return 0
