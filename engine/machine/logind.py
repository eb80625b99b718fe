"""Will logging out kill a detached run? systemd-logind's KillUserProcesses (RELIABILITY P9).

The job runs in its own session (setsid), which protects it from a terminal hang-up but not from
logind: with KillUserProcesses=yes, logging out stops the login session's scope (its cgroup) and
every process in it, setsid or not. Lingering alone does not help a process inside that scope; it
keeps the user's own systemd manager (user@UID.service) alive after logout, and
`systemd-run --user --scope` is what moves a command into that manager, out of the session.
Without lingering, the user manager itself stops at the last logout, taking such scopes with it.

Only a warning, never a refusal: the reading can be wrong (containers, odd setups). No loginctl, no
systemd, or any failure to read: nothing to say, and never a crash.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.machine.problems import Problem

CONF_FILES = ("/etc/systemd/logind.conf",)
CONF_DIRS = ("/usr/lib/systemd/logind.conf.d", "/run/systemd/logind.conf.d", "/etc/systemd/logind.conf.d")
LINGER_DIR = "/var/lib/systemd/linger"
TIMEOUT_S = 3.0


@dataclass(frozen=True)
class LogindState:
    kill_user_processes: bool
    linger: bool
    in_session_scope: bool  # this process lives in session-N.scope: logout stops it when killing is on
    in_user_manager: bool  # under user@UID.service (systemd-run --user): lives as long as that manager


def _loginctl(loginctl: str, *args: str) -> dict[str, str] | None:
    """`loginctl ARGS` as {property: value}; None if it fails (no systemd as PID 1, no bus, no user)."""
    try:
        done = subprocess.run([loginctl, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "1", "on")


def _conf_kill_setting(files: Sequence[Path]) -> dict[str, str]:
    """KillUserProcesses/KillOnlyUsers/KillExcludeUsers from logind.conf and its drop-ins (later wins)."""
    found: dict[str, str] = {}
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line.strip("[]").strip()
            elif section == "Login" and "=" in line and not line.startswith(("#", ";")):
                key, value = (part.strip() for part in line.split("=", 1))
                if key in ("KillUserProcesses", "KillOnlyUsers", "KillExcludeUsers"):
                    found[key] = value
    return found


def conf_files(files: Sequence[str] = CONF_FILES, dirs: Sequence[str] = CONF_DIRS) -> list[Path]:
    """The main file, then drop-ins sorted by name (as systemd reads them)."""
    drop_ins: dict[str, Path] = {}
    for d in dirs:  # a later folder's file of the same name replaces an earlier one
        try:
            drop_ins.update({p.name: p for p in Path(d).glob("*.conf")})
        except OSError:
            continue
    return [Path(f) for f in files] + [drop_ins[name] for name in sorted(drop_ins)]


def _cgroup_path(cgroup_file: str) -> str:
    try:
        return Path(cgroup_file).read_text(errors="replace")
    except OSError:
        return ""


def read_state(*, user: str | None = None, cgroup_file: str = "/proc/self/cgroup",
               conf: Sequence[Path] | None = None, linger_dir: str = LINGER_DIR) -> LogindState | None:
    """What logind will do to this process's children at logout; None if there is no logind to ask."""
    loginctl = shutil.which("loginctl")
    if loginctl is None:
        return None
    user = user or _user()
    manager = _loginctl(loginctl, "show-session", "-p", "KillUserProcesses", "-p", "KillOnlyUsers",
                        "-p", "KillExcludeUsers")  # no session id: the manager's own properties
    if manager is None or "KillUserProcesses" not in manager:
        if _loginctl(loginctl, "list-sessions", "--no-legend") is None:
            return None  # loginctl is installed but systemd/logind is not running (containers, WSL1)
        manager = _conf_kill_setting(conf if conf is not None else conf_files())
    kill = _yes(manager.get("KillUserProcesses"))
    only = manager.get("KillOnlyUsers", "").split()
    exclude = manager.get("KillExcludeUsers", "root").split()
    if (only and user not in only) or user in exclude:
        kill = False
    shown = _loginctl(loginctl, "show-user", user, "-p", "Linger")
    linger = _yes(shown.get("Linger")) if shown else Path(linger_dir, user).exists()
    cgroup = _cgroup_path(cgroup_file)
    return LogindState(kill_user_processes=kill, linger=linger,
                       in_session_scope=re.search(r"/session-[^/\s]+\.scope", cgroup) is not None,
                       in_user_manager=re.search(r"/user@\d+\.service", cgroup) is not None)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def logout_risk(state: LogindState | None = None, *, user: str | None = None,
                cgroup_file: str = "/proc/self/cgroup", conf: Sequence[Path] | None = None,
                linger_dir: str = LINGER_DIR) -> Problem | None:
    """A warning with its fix when logging out would end a run started from here, else None."""
    if state is None:
        try:
            state = read_state(user=user, cgroup_file=cgroup_file, conf=conf, linger_dir=linger_dir)
        except Exception:  # a preflight nicety: never the reason a run does not start
            return None
    if state is None:
        return None
    user = user or _user()
    linger_fix = f"loginctl enable-linger {user}"
    scope_fix = "systemd-run --user --scope llm-wizard ... (the run then lives outside the login session)"
    if state.in_session_scope and state.kill_user_processes:
        fix = scope_fix if state.linger else f"{linger_fix}, then start runs with {scope_fix}"
        return Problem("warning", "logout-kills-runs",
                       "logind has KillUserProcesses=yes: logging out ends this login session and every "
                       "process started from it, detached training runs included", f"Run {fix}")
    if state.in_user_manager and not state.linger:
        return Problem("warning", "logout-kills-runs",
                       f"lingering is off for {user}: your systemd user manager, and the runs started under "
                       "it, stop when you log out", f"Run {linger_fix}")
    return None
