"""Process and session faults around a detached run (RELIABILITY P3, P9, P10): Ctrl-C in a real
terminal, logind killing a session's processes at logout, and a launcher child (torchrun-like) that
re-installs its own SIGHUP handler."""

from __future__ import annotations

import os
import pty
import select
import shlex
import signal
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from run_helpers import make_corpus, tiny_spec

from engine import spec

from engine.machine import probe as hardware

from engine.run import job

from engine.machine import logind

from engine import processes
from engine.runfolder import folder as runfolder
from engine.machine.probe import Problem

ROOT = Path(__file__).resolve().parents[2]

# --- P9: logind KillUserProcesses and lingering (a fake loginctl on PATH) ---------------------------

FAKE_LOGINCTL = """#!/bin/sh
# Answers like systemd's loginctl, from $FAKE_* (the test sets them); $FAKE_FAIL: no systemd here.
if [ -n "$FAKE_FAIL" ]; then
  echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2; exit 1
fi
case "$1" in
  show-session)
    [ -n "$FAKE_NO_MANAGER" ] && exit 1
    printf 'KillUserProcesses=%s\\nKillOnlyUsers=%s\\n' "$FAKE_KILL" "$FAKE_ONLY"
    printf 'KillExcludeUsers=%s\\n' "${FAKE_EXCLUDE-root}" ;;
  show-user) [ -n "$FAKE_NO_USER" ] && exit 1; printf 'Linger=%s\\n' "$FAKE_LINGER" ;;
  list-sessions) echo "  4 1000 alice pts/0" ;;
  *) exit 1 ;;
esac
"""
SESSION_CGROUP = "0::/user.slice/user-1000.slice/session-4.scope\n"
USER_MANAGER_CGROUP = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1f2.scope\n"


@pytest.fixture
def loginctl(tmp_path, monkeypatch):
    """Put a fake loginctl first on PATH; returns a function that writes a cgroup file to read."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "loginctl"
    fake.write_text(FAKE_LOGINCTL)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var in ("FAKE_FAIL", "FAKE_NO_MANAGER", "FAKE_NO_USER", "FAKE_ONLY", "FAKE_EXCLUDE"):
        monkeypatch.delenv(var, raising=False)

    def risk(kill: str, linger: str, cgroup: str = SESSION_CGROUP, **kw) -> Problem | None:
        monkeypatch.setenv("FAKE_KILL", kill)
        monkeypatch.setenv("FAKE_LINGER", linger)
        cg = tmp_path / "cgroup"
        cg.write_text(cgroup)
        return logind.logout_risk(user="alice", cgroup_file=str(cg), linger_dir=str(tmp_path / "linger"), **kw)

    return risk


def test_P9_kill_user_processes_without_linger_warns_with_both_fixes(loginctl) -> None:
    risk = loginctl("yes", "no")
    assert risk is not None and risk.severity == "warning" and risk.code == "logout-kills-runs"
    assert "KillUserProcesses=yes" in risk.message
    assert "loginctl enable-linger alice" in risk.fix and "systemd-run --user --scope" in risk.fix
    # lingering on, still inside the login session's scope: logout still kills it; only the scope move is left
    risk = loginctl("yes", "yes")
    assert risk is not None and "systemd-run --user --scope" in risk.fix and "enable-linger" not in risk.fix


def test_P9_no_warning_when_logout_keeps_the_run(loginctl, monkeypatch) -> None:
    assert loginctl("no", "no") is None  # the default on most distributions
    assert loginctl("yes", "yes", USER_MANAGER_CGROUP) is None  # already under systemd-run --user, lingering
    monkeypatch.setenv("FAKE_EXCLUDE", "root alice")
    assert loginctl("yes", "no") is None  # KillExcludeUsers
    monkeypatch.setenv("FAKE_EXCLUDE", "root")
    monkeypatch.setenv("FAKE_ONLY", "bob")
    assert loginctl("yes", "no") is None  # KillOnlyUsers names someone else
    monkeypatch.delenv("FAKE_ONLY")
    # under the user manager without lingering: the manager stops at logout, whatever KillUserProcesses says
    risk = loginctl("no", "no", USER_MANAGER_CGROUP)
    assert risk is not None and risk.fix == "Run loginctl enable-linger alice"


def test_P9_no_systemd_or_no_loginctl_is_silent(loginctl, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    assert loginctl("yes", "no") is None  # loginctl installed, systemd not running (this CI machine)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert logind.read_state(user="alice") is None and logind.logout_risk(user="alice") is None


def test_P9_manager_unreadable_falls_back_to_logind_conf(loginctl, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FAKE_NO_MANAGER", "1")
    main, drop_in = tmp_path / "logind.conf", tmp_path / "logind.conf.d"
    main.write_text("[Login]\n#KillUserProcesses=no\nKillUserProcesses=no\n")
    drop_in.mkdir()
    (drop_in / "50-kill.conf").write_text("[Login]\nKillUserProcesses=yes\n")
    conf = logind.conf_files([str(main)], [str(drop_in)])
    assert loginctl("ignored", "no", conf=conf) is not None  # the drop-in wins over the main file
    assert loginctl("ignored", "no", conf=[main]) is None


def test_P9_linger_read_from_its_file_when_show_user_fails(loginctl, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FAKE_NO_USER", "1")
    assert "enable-linger alice" in loginctl("yes", "ignored").fix
    (tmp_path / "linger").mkdir()
    (tmp_path / "linger" / "alice").touch()  # what `loginctl enable-linger alice` creates
    assert "enable-linger" not in loginctl("yes", "ignored").fix


def test_P9_doctor_and_launch_carry_the_warning(monkeypatch, tmp_path, capfd) -> None:
    warning = Problem("warning", "logout-kills-runs", "logind has KillUserProcesses=yes: ...", "Run loginctl ...")
    monkeypatch.setattr(logind, "logout_risk", lambda **kw: warning)
    from engine.machine.fake_nvml import fixture

    assert warning in hardware.probe(nvml=fixture("none"), import_torch=False).problems  # `llm-wizard doctor`
    # launching still happens (a warning, not a refusal) and the dashboard/attach see it as an alert
    run = job.create(tiny_spec(make_corpus(tmp_path)), tmp_path / "runs")
    monkeypatch.setattr(job, "spawn_detached", lambda args, **kw: SimpleNamespace(pid=os.getpid()))
    assert job.launch(run) == os.getpid()
    alerts = [e for e in runfolder.read_events(run)[0] if e["type"] == "alert"]
    assert alerts == [{**alerts[0], "kind": "logout", "message": f"{warning.message}. {warning.fix}"}]
    # `llm-wizard train` says it before starting the run
    from tui.cli import main

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec.to_toml(tiny_spec(make_corpus(tmp_path))))
    capfd.readouterr()
    assert main(["--runs-dir", str(tmp_path / "runs"), "train", str(spec_file), "--no-wait"]) == 0
    said = capfd.readouterr()
    assert f"warning: {warning.message}" in said.err and f"fix: {warning.fix}" in said.err and "started run" in said.out


# --- P10: a torchrun-like child under our launcher survives the terminal's hang-up -----------------

CHILD = """
import os, signal, sys, time
beat = sys.argv[1]
def on_hup(signum, frame):  # as torchrun's agent: a SIGHUP ends it (after noting it)
    open(beat + ".hup", "w").close()
    sys.exit(129)
signal.signal(signal.SIGHUP, on_hup)  # replaces an inherited SIG_IGN, as torchrun/accelerate launch do
n = 0
while True:
    n += 1
    with open(beat + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(beat + ".tmp", beat)
    time.sleep(0.05)
"""

LAUNCHER = """
import subprocess, sys, time
from pathlib import Path
from engine.run.job import spawn_detached
d = Path(sys.argv[1])
child = [sys.executable, str(d / "child.py")]
detached = spawn_detached(child + [str(d / "detached.beat")], log=d / "detached.log", cwd=d)
attached = subprocess.Popen(child + [str(d / "attached.beat")])  # the negative control: same session
(d / "pids").write_text(f"{detached.pid} {attached.pid}")
print("LAUNCHED", flush=True)
time.sleep(120)
"""


def _read_until(fd: int, marker: bytes, timeout: float) -> None:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    assert marker in seen, seen.decode(errors="replace")[-2000:]


def _beat(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _wait(cond, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.mark.slow
def test_P10_child_reinstalling_sighup_survives_pty_hangup(tmp_path) -> None:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    shell, master = pty.fork()
    if shell == 0:  # an interactive shell on the pseudo-terminal, as after `ssh vm`
        os.environ["HISTFILE"] = "/dev/null"
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    detached = attached = None
    try:
        os.write(master, f"{shlex.quote(sys.executable)} {tmp_path / 'launcher.py'} {tmp_path}\n".encode())
        _read_until(master, b"LAUNCHED", 60)
        detached, attached = map(int, (tmp_path / "pids").read_text().split())
        _wait(lambda: _beat(tmp_path / "detached.beat") > 2 and _beat(tmp_path / "attached.beat") > 2, 30,
              "both children to beat")
        assert os.getsid(detached) == detached != os.getsid(shell)

        os.close(master)  # the connection drops: the kernel hangs up the terminal; bash passes SIGHUP on
        master = -1
        os.waitpid(shell, 0)
        # the control, in the terminal's session with the same handler, got the hang-up and ended ...
        _wait(lambda: (tmp_path / "attached.beat.hup").exists() and not processes.pid_alive(attached), 30,
              "the attached control to get SIGHUP")
        # ... the detached one did not, and keeps working
        at_hangup = _beat(tmp_path / "detached.beat")
        _wait(lambda: _beat(tmp_path / "detached.beat") >= at_hangup + 20, 30, "20 more heartbeats")
        assert processes.pid_alive(detached) and not (tmp_path / "detached.beat.hup").exists()
    finally:
        if master >= 0:
            os.close(master)
        for pid in (detached, attached):
            if pid and processes.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- P3: Ctrl-C in the TUI's terminal (tmux, a private server) -------------------------------------

SIGINT_REPORTER = ("import signal, time; signal.signal(signal.SIGINT, lambda *a: print('SIGINT-REACHED-THE-TERMINAL', "
                   "flush=True)); print('COOKED-READY', flush=True); time.sleep(60)")


@pytest.mark.slow
def test_P3_ctrl_c_in_the_terminal_asks_and_never_reaches_the_runner(tmp_path) -> None:
    from test_tui_tmux import Tmux

    runs = tmp_path / "runs"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "LLM_WIZARD_RUNS": str(runs), "LLM_WIZARD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
        "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}.items())
    py = shlex.quote(sys.executable)
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec.to_toml(tiny_spec(make_corpus(tmp_path), train={"max_steps": 100000},
                                                checkpoint={"every": 10000})))
    term = Tmux("ctrlc")
    # the runner is started from this terminal, then its dashboard opens there; after the UI closes, a
    # script in cooked mode shows that Ctrl-C does send SIGINT to the terminal's foreground processes
    term.start(f"env {env} {py} -m tui.cli train {spec_file} --no-wait --step-sleep 0.05 && "
               f"env {env} {py} -m tui.cli attach latest; {py} -c {shlex.quote(SIGINT_REPORTER)}; sleep 30")
    pid = None
    try:
        term.wait_for(r"loss\s+\d+\.\d+", timeout=120)
        (run,) = runs.iterdir()
        pid = runfolder.read_status(run)["pid"]

        def steps_on(after: int) -> int:
            return _wait(lambda: (s := runfolder.read_status(run))["step"] > after and s["step"], 60, "more steps")

        term.keys("C-c")  # the TUI holds the terminal raw: a key, shown as the question
        screen = term.wait_for(r"Close the UI or stop training\?(.|\n)*Close UI \[c\] +Stop training \[s\]", timeout=30)
        steps_on(runfolder.read_status(run)["step"])
        assert runfolder.read_status(run)["state"] == "running" and not (run / "commands.jsonl").exists(), screen

        term.keys("c")
        term.wait_for(r"COOKED-READY", timeout=30)
        term.keys("C-c")  # now the line discipline turns it into SIGINT for the foreground group
        term.wait_for(r"SIGINT-REACHED-THE-TERMINAL", timeout=30)
        step = steps_on(runfolder.read_status(run)["step"])
        status = runfolder.read_status(run)
        assert status["state"] == "running" and status["pid"] == pid and step > 0
        assert processes.pid_alive(pid) and not any(e["type"] == "control_ack" for e in runfolder.read_events(run)[0])
    finally:
        term.kill()
        if pid and processes.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
