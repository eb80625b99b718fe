"""`llm-wizard control`: steer a running job (pause, resume, save, stop, lr, rollback, rescue)."""

from __future__ import annotations

import argparse
import math

HELP = "steer a running job: pause | resume | save | stop | lr FACTOR | rollback STEP | rescue"
CHOICES = ("pause", "resume", "save", "stop", "lr", "set_lr", "rollback", "rescue")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("cmd", choices=CHOICES, metavar="CMD", help=" | ".join(CHOICES))
    parser.add_argument("value", nargs="?", type=float,
                        help="lr: the factor (0.5 halves the LR); rollback: the checkpoint's step")
    parser.add_argument("--value", dest="lr_value", type=float, metavar="LR", help="lr: set this learning rate")
    parser.add_argument("--checkpoint", metavar="NAME", help="rollback: a checkpoint by name (step-000500-b1), "
                        "e.g. one on an abandoned branch")
    parser.add_argument("--lr-factor", type=float, help="rollback: also multiply the LR by this")
    parser.add_argument("--factor", type=float, help="rescue: LR factor while rescuing (default 0.1)")
    parser.add_argument("--steps", type=int, help="rescue: steps at the lowered LR (default 200)")
    parser.add_argument("--back", type=int, help="rescue: roll back about this many steps (default 100)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the acknowledgement")
    parser.add_argument("--id", dest="cmd_id", metavar="ID", help="send with this command id: retry a command whose "
                        "acknowledgement did not come (the run executes each id once; a repeat gets the first answer)")
    parser.add_argument("--json", action="store_true", help='print the ack {"id", "cmd", "ok", "step", "message"}')
    parser.add_argument("--yes", action="store_true", help="stop: do not ask first (a hosted run's stop cancels its "
                        "billed remote job, so it asks)")


def command_args(args: argparse.Namespace) -> tuple[str, dict[str, float | int]]:
    """The command and its arguments, each number checked where the user typed it (ranges in the message)."""
    from engine.errors import UserError
    from engine.vocabulary import lr_problem

    cmd, extra = args.cmd, {}
    if cmd in ("lr", "set_lr"):
        cmd = "set_lr"
        if (args.value is None) == (args.lr_value is None):
            raise UserError("lr needs a factor (`lr 0.5`) or a value (`lr --value 1e-4`)", field="value")
        extra = {"factor": args.value} if args.value is not None else {"value": args.lr_value}
    elif cmd == "rollback":
        if args.checkpoint:
            extra = {"checkpoint": args.checkpoint}
        elif args.value is None or args.value != int(args.value):
            raise UserError("rollback needs the checkpoint's step, e.g. `rollback 500`, or --checkpoint NAME",
                            field="value")
        else:
            extra = {"step": int(args.value)}
        if args.lr_factor is not None:  # 0 is refused below, never dropped
            extra["lr_factor"] = args.lr_factor
    elif cmd == "rescue":
        extra = {k: v for k in ("factor", "steps", "back") if (v := getattr(args, k)) is not None}
    elif args.value is not None:
        raise UserError(f"{cmd} takes no value", field="value")
    for key in ("factor", "lr_factor"):
        if key in extra and not (math.isfinite(extra[key]) and extra[key] > 0):
            flag = {"lr_factor": "--lr-factor", "factor": "the factor" if cmd == "set_lr" else "--factor"}[key]
            raise UserError(f"{flag} multiplies the learning rate: it must be a number above 0, got {extra[key]:g}",
                            field=key)
    for key, low in (("steps", 1), ("back", 0)):
        if key in extra and extra[key] < low:
            raise UserError(f"--{key}: a whole number from {low} up, got {extra[key]}", field=key)
    if "value" in extra and (why := lr_problem(extra["value"])):
        raise UserError(f"--value: {why}", field="value")
    return cmd, extra


def check_lr(cmd: str, extra: dict[str, float | int], lr: float | None) -> None:
    """The learning rate a factor leads to from the run's current one (status.json), checked against the allowed
    range before it is sent (an LR of 0, a schedule's end, is left to the job); the job checks the peak LR again
    when it applies it (a rescue's from its checkpoint's)."""
    from engine.errors import UserError
    from engine.vocabulary import lr_problem

    factor = extra.get("factor")
    if factor is not None and lr and (why := lr_problem(lr * factor)):
        raise UserError(f"{why} ({lr:.3g} x {factor:g}); {cmd} not sent", field="value")


def run(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.runfolder import commands as commands_file
    from engine.runfolder import events as ev
    from engine.runfolder import folder as runfolder
    from engine.runfolder import status as st
    from engine.paths import runs_dir
    from tui.output import error, out, print_json

    run_path = runfolder.resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))
    cmd, extra = command_args(args)
    command = commands_file.build(cmd, cid=getattr(args, "cmd_id", None), **extra)  # checked before it is sent
    status = runfolder.current_status(run_path)
    if status is not None and status.state == "damaged":
        raise UserError(f"run {run_path.name}: {status.message}", field="run")
    if status is not None and status.state == "done":
        raise UserError(f"run {run_path.name} is finished (done at step {status.step or 0}): nothing to steer",
                        field="run")
    if status is None or not status.live:
        raise UserError(f"run {run_path.name} is not running (state: {status.state if status else 'unknown'}); "
                        f"`llm-wizard train --resume {run_path.name}` continues it", field="run")
    check_lr(cmd, extra, status.lr)
    if cmd == "stop" and not args.yes and not _confirmed_stop(run_path):
        error(f"not stopped: run {run_path.name} goes on")
        return 1
    offset = ev.end_offset(run_path)  # from the end: one small read, whatever the log's size
    cid = commands_file.send(run_path, command)  # UserError saying why not, unless the job's reader will take it
    if status.state == "stalled" and st.stopped(status.pid or 0):  # no answer can come: said at once
        error(f"{cmd} is queued as command id {cid}, but run {run_path.name} makes {status.message}; the "
              "command runs when it goes on")
        return 1
    ack = ev.wait_ack(run_path, cid, timeout=args.timeout, from_offset=offset, live=runfolder.live(run_path))
    if ack is None:
        now = runfolder.current_status(run_path)
        state = now.state if now is not None else "unknown"
        if state == "stalled" and now is not None:
            error(f"no acknowledgement from run {run_path.name} within {args.timeout:g} s: it makes "
                  f"{now.message}; {cmd} is queued as command id {cid} and runs when the job goes on")
        elif state not in runfolder.LIVE_STATES:
            error(f"run {run_path.name} ended (state: {state}) before acknowledging {cmd} (command id {cid}); "
                  f"a resumed run does not execute commands sent before it started: send it again after "
                  f"`llm-wizard train --resume {run_path.name}`")
        else:
            error(f"no acknowledgement from run {run_path.name} within {args.timeout:g} s: {cmd} is queued as "
                  f"command id {cid} and runs at the next optimizer step; to wait again without running it twice: "
                  f"`llm-wizard control {run_path.name} {args.cmd}{_retry_args(args)} --id {cid}`")
        return 1
    if args.json:  # DESIGN.md: {"id", "cmd", "ok", "step", "message"} first, then what the ack adds
        body = {k: v for k, v in ack.to_dict().items() if k not in ("v", "t", "type")}
        print_json({**{k: body.pop(k) for k in ("id", "cmd", "ok", "step", "message")}, **body})
    elif ack.duplicate:
        out().print(f"[yellow]duplicate[/] {cid}: {ack.message}")
    elif ack.ok:
        out().print(f"[green]ok[/] step {ack.step}: {ack.message}")
    else:
        error(f"{cmd} refused at step {ack.step}: {ack.message}")
    return 0 if ack.ok else 1


def _retry_args(args: argparse.Namespace) -> str:
    """The command's own arguments, as typed, for the retry line."""
    parts = [f" {args.value:g}"] if args.value is not None else []
    for flag, key in (("--value", "lr_value"), ("--checkpoint", "checkpoint"), ("--lr-factor", "lr_factor"),
                      ("--factor", "factor"), ("--steps", "steps"), ("--back", "back")):
        if (v := getattr(args, key, None)) is not None:
            parts.append(f" {flag} {v}")
    return "".join(parts)


def _confirmed_stop(run_path: object) -> bool:
    """A technique whose stop cannot be undone (a hosted job's cancel) has a STOP_QUESTION: asked on a terminal,
    else refused without --yes. Other runs save and stop: nothing to ask."""
    import sys

    from engine.errors import UserError
    from engine.runfolder import folder as runfolder
    from engine.techniques.base import get

    try:
        question = getattr(get(runfolder.run_info(run_path).technique), "STOP_QUESTION", None)  # type: ignore[arg-type]
    except UserError:
        return True
    if question is None:
        return True
    if not sys.stdin.isatty():
        raise UserError(f"{question} Add --yes to stop it", field="cmd")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
