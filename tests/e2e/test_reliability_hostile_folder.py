"""A live tiny job whose run folder is attacked while it is steered (RELIABILITY H5-H7): commands.jsonl and
events.jsonl truncated, filled with garbage and huge lines, replaced by new files, links, FIFOs and made
writable by others, with `llm-wizard control` sent after each attack. Every command the CLI reported as
queued or answered is acknowledged by the job; a refusal names why and reports nothing queued. Then the
same run meets two `train --resume` at once, a SIGSTOP, and a `--resume` once it is finished."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cli_helpers import cli
from run_helpers import control, make_corpus, tiny_spec, wait_exit, wait_for, wait_step

from engine import spec as spec_mod
from engine.errors import UserError
from engine.processes import pid_alive
from engine.run import job
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.runfolder.commands import COMMANDS_FILE



def _cli(*argv: str) -> tuple[int | None, str]:
    return cli(*argv, timeout=60.0)


def _garbage(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(b"\x00\xff{}[]\",:ab \t\x80") for _ in range(n))


def _attacks(run: Path) -> dict[str, Callable[[random.Random], Callable[[], None] | None]]:
    """Each attack changes a file and returns the user's repair, if the CLI is to refuse until it is made."""
    cmds, events = run / COMMANDS_FILE, run / ev.EVENTS

    def append(path: Path, data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)

    def replace_link(rng: random.Random) -> Callable[[], None]:
        other = run.parent / f"other-{rng.random()}"
        other.write_text("")
        cmds.unlink(missing_ok=True)
        cmds.symlink_to(other)
        return lambda: cmds.unlink()

    def replace_fifo(rng: random.Random) -> Callable[[], None]:
        cmds.unlink(missing_ok=True)
        os.mkfifo(cmds)
        return lambda: cmds.unlink()

    def open_to_all(rng: random.Random) -> Callable[[], None]:
        if not cmds.exists():
            cmds.write_text("")
        cmds.chmod(0o666)
        return lambda: cmds.chmod(0o644)

    def rename_over(rng: random.Random) -> None:  # an editor's save: a copy renamed over the file
        copy = run / ".commands.copy"
        copy.write_bytes(cmds.read_bytes() if cmds.exists() else b"")
        copy.chmod(0o644)
        os.replace(copy, cmds)

    return {
        "commands: truncate": lambda r: os.truncate(cmds, r.randrange(0, max(1, cmds.stat().st_size))),
        "commands: garbage, no newline": lambda r: append(cmds, _garbage(r, r.randrange(1, 300))),
        "commands: garbage line": lambda r: append(cmds, _garbage(r, r.randrange(1, 300)) + b"\n"),
        "commands: 3 MiB unterminated line": lambda r: append(cmds, b'{"id": "h", "cmd": "' + b"x" * (3 << 20)),
        "commands: removed": lambda r: cmds.unlink(missing_ok=True),
        "commands: renamed over": rename_over,
        "commands: symlink": replace_link,
        "commands: FIFO": replace_fifo,
        "commands: writable by all": open_to_all,
        "events: garbage, no newline": lambda r: append(events, _garbage(r, r.randrange(1, 300))),
        "events: garbage line": lambda r: append(events, _garbage(r, r.randrange(1, 300)) + b"\n"),
        "events: 3 MiB unterminated line": lambda r: append(events, b'{"v": 1, "t": ' + b"9" * (3 << 20)),
        "events: truncated mid-line": lambda r: os.truncate(events, events.stat().st_size - r.randrange(1, 40)),
    }


def _acked(run: Path) -> set[str]:
    return {e.id for e in ev.read(run) if isinstance(e, ev.ControlAck) and e.id}


def test_H5_H7_a_live_job_under_attack_acknowledges_every_queued_command_and_diagnoses_right(tmp_path: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 80}, checkpoint={"every": 10, "keep": 3})
    run = job.create(s, tmp_path / "runs")
    pid = job.launch(run, step_sleep=0.02)
    others: list[int] = []
    try:
        wait_step(run, 2)
        assert control(run, "pause")["ok"]  # paused: commands are still read and answered, no step moves
        rng, attacks = random.Random(20), _attacks(run)
        reported, log, seen = [], [], set()
        for i in range(36):
            name = rng.choice(sorted(attacks))
            repair = attacks[name](rng)
            cmd = rng.choice([["pause"], ["lr", "1"], ["save"], ["pause"]])  # it stays paused: no step moves
            t0 = time.monotonic()
            code, out = _cli("control", str(run), *cmd, "--json", "--timeout", "20")
            log.append(f"{i} {name} -> {cmd} {code} in {time.monotonic() - t0:.1f} s: {out[-300:]}")
            if repair is not None:  # the CLI refuses, saying why, and reports nothing queued
                assert code == 2 and "not sent" in out and "queued" not in out and "Traceback" not in out, log[-1]
                repair()
                code, out = _cli("control", str(run), *cmd, "--json", "--timeout", "20")
                log.append(f"{i} repaired -> {code}: {out[-300:]}")
            assert "Traceback" not in out and code in (0, 1), log[-1]
            if code == 0 or out.startswith("{"):  # answered (ok, or refused by the job with its ack)
                reported.append(json.loads(out[:out.rindex("}") + 1])["id"])
            else:
                found = re.search(r"queued as command id (\w+)", out)
                assert found, log[-1]
                reported.append(found.group(1))
            seen |= _acked(run)  # a later attack may cut the log's tail: what was answered stays answered
        try:
            wait_for(lambda: set(reported) <= seen | _acked(run), 30, "every reported command's ack")
            if os.environ.get("LLMW_SHOW_FUZZ"):
                print("\n".join(log))
        except AssertionError:
            raise AssertionError("\n".join([*log, f"never acknowledged: {set(reported) - seen}"])) from None
        assert control(run, "resume")["ok"] and control(run, "stop")["ok"] and wait_exit(pid) == 0

        # two `train --resume` at once (both past the CLI's checks before either job holds the lock): one
        # trains, the other is told which process does (not "killed by the OOM killer"), its status untouched
        pids = [job.launch(run, resume=True, step_sleep=0.05) for _ in range(2)]
        others.extend(pids)
        said = []
        for p in pids:
            try:
                said.append(job.wait_started(run, p, timeout=120)["state"])
            except UserError as e:
                said.append(str(e))
        winner = runfolder.read_status(run)["pid"]
        loser = next(p for p in pids if p != winner)
        assert sorted(said) == sorted(["running", f"run {run.name} is already being trained by process {winner}; "
                                       f"watch it with `llm-wizard attach {run.name}`"]), said
        assert not pid_alive(loser) and "already being trained" in (run / runfolder.LOG).read_text()
        code, out = _cli("train", "--resume", str(run))  # a third, later: refused up front, naming it
        assert code == 2 and str(winner) in out and "out-of-memory" not in out, out

        # SIGSTOP: shown stalled; a command sent now is said queued at once, and acknowledged after SIGCONT
        wait_step(run, runfolder.read_status(run)["step"] + 1)
        os.kill(winner, signal.SIGSTOP)
        wait_for(lambda: runfolder.current_status(run).state == "stalled", 10, "stalled")
        code, out = _cli("runs", "--runs-dir", str(run.parent))
        assert "stalled" in out and f"kill -CONT {winner}" in out
        code, out = _cli("control", str(run), "lr", "1")
        assert code == 1 and "SIGSTOP" in out and (found := re.search(r"queued as command id (\w+)", out))
        os.kill(winner, signal.SIGCONT)
        wait_for(lambda: found.group(1) in _acked(run), 30, "the ack of the command sent while stopped")
        wait_for(lambda: runfolder.read_status(run).get("state") == "done", 120, "done")

        # --resume of the finished run: refused with how to train further; final/ and the losses untouched
        final = sorted((p.name, p.stat().st_mtime_ns) for p in (run / "final").iterdir())
        code, out = _cli("train", "--resume", str(run))
        assert code == 2 and "is finished" in out and "model.path=" in out, out
        # the advised new run is one the spec loader takes (a scratch run goes on as a full fine-tune)
        advised = re.findall(r"--set (\S+?)`?(?=\s|$)", " ".join(out.split()))
        assert "technique=full" in advised, out
        spec_mod.load(run / "spec.toml", [a.replace("=N", "=5") for a in advised])
        assert sorted((p.name, p.stat().st_mtime_ns) for p in (run / "final").iterdir()) == final
        assert runfolder.read_status(run)["state"] == "done" and runfolder.read_status(run)["loss"] is not None
    finally:
        for p in (pid, *others):
            try:
                os.kill(p, signal.SIGCONT)
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_P2_P4_a_frozen_then_killed_follower_never_stops_the_job(tmp_path: Path) -> None:
    """A reader that stops reading (its stdout a pipe nobody drains), is frozen (SIGSTOP), then killed with its
    process group (SIGKILL), as a dashboard or `attach` whose terminal froze and was closed: the job steps on."""
    s = tiny_spec(make_corpus(tmp_path, lines=600), train={"max_steps": 5000}, checkpoint={"every": 1000})
    run = job.create(s, tmp_path / "runs")
    pid = job.launch(run, step_sleep=0.03)
    follower = None
    try:
        wait_step(run, 2)
        follower = subprocess.Popen([sys.executable, "-m", "tui.cli", "attach", str(run), "--follow", "--json"],
                                    cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(1.0)
        os.kill(follower.pid, signal.SIGSTOP)
        frozen = runfolder.read_status(run)["step"]
        wait_step(run, frozen + 10, timeout=60)  # frozen reader: the job goes on
        os.killpg(follower.pid, signal.SIGKILL)
        follower.wait(timeout=30)
        killed = runfolder.read_status(run)["step"]
        after = wait_step(run, killed + 10, timeout=60)
        assert after["state"] == "running" and pid_alive(pid)
        assert control(run, "stop")["ok"] and wait_exit(pid) == 0
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
