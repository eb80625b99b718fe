"""`llm-wizard train`: start a run from a spec (detached); prints the run id and folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "start a run from a spec (detached); prints the run id and folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="the run spec (TOML), e.g. presets/tiny.toml")
    parser.add_argument("--resume", metavar="RUN", help="continue a stopped or killed run from its newest checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec setting, e.g. --set train.max_steps=100 (repeatable)")
    parser.add_argument("--merge", action="store_true",
                        help="LoRA/QLoRA: also write final/merged/, the base with the adapter folded in "
                             "(= --set options.merge=true)")
    parser.add_argument("--foreground", action="store_true",
                        help="train in this terminal (Ctrl-C saves and stops) instead of detached")
    parser.add_argument("--no-wait", action="store_true",
                        help="return as soon as the job is started, before data preparation is checked")
    parser.add_argument("--json", action="store_true", help='print {"id", "path", "pid"}')
    parser.add_argument("--print-launch", action="store_true",
                        help="several processes/machines: prepare the run folder and print the command to run on "
                             "each machine, without starting anything")
    parser.add_argument("--step-sleep", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: fixed step time


def run(args: argparse.Namespace) -> int:
    from engine.checkpoints import store as checkpoint
    from engine.run import hub_fetch, job
    from engine.run.distributed import launch as launch_config
    from engine.processes import pid_alive
    from engine.runfolder import events as ev
    from engine.runfolder import folder as runfolder
    from engine import spec as spec_mod
    from engine.errors import UserError
    from engine.paths import runs_dir
    from engine.techniques.base import get, unused_settings
    from tui.output import err, error, out, print_json

    restart = False  # --resume of a run with no checkpoint yet that may start again (below)
    if args.resume:
        if args.spec or args.overrides or args.merge:
            raise UserError("--resume takes the run's own spec.toml; leave out SPEC, --set and --merge", field="resume")
        run_path = runfolder.resolve_run(args.resume, runs_dir(getattr(args, "runs_dir", None)))
        status = runfolder.read_status(run_path)
        if status.get("state") in runfolder.LIVE_STATES:
            raise UserError(f"run {run_path.name} is still {status['state']} (pid {status.get('pid')})", field="resume")
        if status.get("state") == "done":  # resuming would train nothing and rewrite final/ over the result
            raise UserError(f"run {run_path.name} is finished (done at step {status.get('step') or 0}): nothing to "
                            f"resume. {_train_further(run_path)}", field="resume")
        spec = spec_mod.load(run_path / runfolder.SPEC)
        if hasattr(get(spec.technique), "remote"):
            pass  # a hosted job: the job process follows the remote job its run folder names (nothing to restore)
        elif checkpoint.find_resume(run_path) is None and hub_fetch.read_pins(run_path):
            # stopped before its first checkpoint (a kill mid-download): the same folder starts again from
            # step 0, with the Hub commits it recorded and the bytes already in the cache
            restart = True
            err().print(f"[dim]run {run_path.name} has no checkpoint yet: starting it again from step 0 with the "
                        "Hub commits it recorded[/]")
        elif checkpoint.find_resume(run_path) is None:
            raise UserError(f"run {run_path.name} has no complete checkpoint to resume from; start it again with "
                            f"`llm-wizard train {run_path / runfolder.SPEC}`", field="resume")
    else:
        if not args.spec:
            raise UserError("give a spec file (see presets/), or --resume RUN", field="spec")
        spec = spec_mod.load(args.spec, args.overrides + (["options.merge=true"] if args.merge else []))
        _preflight_data(spec)
        _preflight_technique(spec)
        if unused := unused_settings(spec):  # said, not refused: a spec may be shared by several techniques
            err().print(f"note: {spec.technique} trains {spec.model.path}'s own model and tokenizer; not used: "
                        f"{', '.join(unused)}", style="yellow", markup=False, highlight=False)
        launch_config.check_supported(spec)
        explicit = getattr(args, "runs_dir", None) or spec.runs_dir or None
        run_path = job.create(spec, runs_dir(explicit))

    if args.print_launch:
        launch_config.write_config(run_path, spec)
        print(launch_config.launch_plan(run_path, spec, resume=bool(args.resume)))
        return 0
    if args.foreground:
        out().print(f"run [bold]{run_path.name}[/] in {run_path}")
        if launch_config.is_multi(spec):
            from engine.run.distributed.supervisor import supervise

            return supervise(run_path, resume=bool(args.resume) and not restart, foreground=True,
                             step_sleep=args.step_sleep)
        return job.run_job(run_path, resume=bool(args.resume) and not restart, foreground=True,
                           step_sleep=args.step_sleep)

    if spec.distributed.num_machines > 1:  # the other machines join the rendezvous that this one hosts
        launch_config.write_config(run_path, spec)
        err().print(launch_config.launch_plan(run_path, spec, resume=bool(args.resume), started=True),
                    markup=False)
    from engine.machine.logind import logout_risk

    if (risk := logout_risk()) is not None:  # RELIABILITY P9: said before the run starts; it still starts
        err().print(f"warning: {risk.message}\n  fix: {risk.fix}", style="yellow", markup=False)
    pid = job.launch(run_path, resume=bool(args.resume) and not restart, step_sleep=args.step_sleep)
    if not args.no_wait:
        show = None if args.json else _show_message
        status = job.wait_started(run_path, pid, on_message=show)
        still_preparing = status.get("state") == "starting" and pid_alive(pid)
        if status.get("state") not in ("running", "paused", "done") and not still_preparing:
            message = job.last_error(run_path) or status.get("message") or "the job ended before training"
            user = any(isinstance(e, ev.Error) and e.kind == "user" for e in ev.read(run_path))
            error(message if user else f"{message} (see {run_path / runfolder.LOG})")
            return 2 if user else 1
    if args.json:
        print_json({"id": run_path.name, "path": str(run_path), "pid": pid})
    else:
        out().print(f"started run [bold]{run_path.name}[/] (pid {pid})\n  folder: {run_path}\n"
                    f"  follow: llm-wizard attach {run_path.name} --follow\n"
                    f"  steer:  llm-wizard control {run_path.name} {_controls(spec)}")
    return 0


def _controls(spec: object) -> str:
    """The controls a run takes: a hosted job's stop cancels it, and the rest it refuses."""
    from engine.techniques.base import get

    if hasattr(get(spec.technique), "remote"):  # type: ignore[attr-defined]
        return "stop (cancels the hosted job; asks first)"
    return "pause|resume|save|stop|lr F|rollback STEP|rescue"


def _show_message(message: str) -> None:
    """What the starting job says; a Hub download's progress is redrawn in place on a terminal."""
    from tui.output import err

    console = err()
    in_place = message.startswith("downloading ") and console.is_terminal
    if in_place or _IN_PLACE:
        console.file.write(f"\r{message}\x1b[K" if in_place else "\n")
        console.file.flush()
    _IN_PLACE[:] = [True] if in_place else []
    if not in_place:
        console.print(message, style="dim", markup=False, highlight=False)


_IN_PLACE: list[bool] = []  # the last message was redrawn in place: the next one starts a new line


def _preflight_data(spec: object) -> None:
    """The data checked before any run folder exists: files found, layout detected, the first rows valid
    (file:line named), text files empty, binary or not UTF-8 (RELIABILITY D1-D3). The job reads the rest."""
    from engine.data.prepare import check
    from engine.data.sources import DataSource

    check(DataSource.from_spec(spec.data))  # type: ignore[attr-defined]


def _preflight_technique(spec: object) -> None:
    """A technique's own checks before launch (QLoRA: 4-bit support here, else LoRA is offered)."""
    from engine.techniques.base import get

    technique = get(spec.technique)  # type: ignore[attr-defined]
    if hasattr(technique, "preflight"):
        technique.preflight(spec)


def _train_further(run: Path) -> str:
    """How to go on training a finished run's model: a new run from it, as its technique can take it."""
    from engine import spec as spec_mod
    from engine.runfolder import folder as runfolder

    final = run / "final"
    again = f"`llm-wizard train {run / runfolder.SPEC} --set train.max_steps=N"
    technique = spec_mod.load(run / runfolder.SPEC).technique
    if technique == "scratch":  # a new model is built from [model]; the trained one goes on as a full fine-tune
        return f"To train further, fine-tune its model in a new run: {again} --set technique=full --set model.path={final}`"
    if (final / "adapter_config.json").is_file():  # an adapter: fold it into its base first
        merged = run / "export" / "merged"
        return (f"To train further, merge the adapter (`llm-wizard export {run.name} --format merged`), then start a "
                f"new run from it: {again} --set model.path={merged}`")
    return f"To train further, start a new run from its model: {again} --set model.path={final}`"

