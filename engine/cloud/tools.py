"""Running the gcloud and sky command-line tools: argument lists only (never a shell), clear errors when a tool is
missing or not logged in. The tools keep their own credentials (gcloud in its configuration folder, SkyPilot in
~/.sky and the clouds' own files); nothing here reads, copies or prints one.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from engine.errors import UserError

INSTALL = {
    "gcloud": "install the Google Cloud CLI (cloud.google.com/sdk/docs/install-sdk; on Debian/Ubuntu the "
              "google-cloud-cli package), then `gcloud init` to log in and pick a project",
    "sky": "pip install 'llm-wizard[cloud]' (SkyPilot), then `sky check` to see which clouds it can use",
    "rsync": "install rsync (apt-get install rsync), or use --method scp",
}
# What gcloud prints when no account is logged in, and when a login has expired.
AUTH_SIGNS = ("You do not currently have an active account selected", "gcloud auth login",
              "Reauthentication required", "invalid_grant")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def find(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"`{tool}` is not installed or not on PATH: {INSTALL.get(tool, 'install it')}", field=tool)
    return path


def run(argv: list[str], *, capture: bool = True, check: bool = True) -> Result:
    """Run one command; `capture=False` lets it talk to the terminal (ssh, prompts). A non-zero exit is a UserError
    naming the command and gcloud's first error line, or saying to log in when that is the reason."""
    find(argv[0])
    try:
        proc = subprocess.run(argv, capture_output=capture, text=True, check=False)
    except OSError as err:
        raise UserError(f"could not run {argv[0]}: {err}", field=argv[0]) from None
    result = Result(proc.returncode, proc.stdout or "", proc.stderr or "")
    if check and result.returncode != 0:
        raise failure(argv, result)
    return result


def failure(argv: list[str], result: Result) -> UserError:
    text = result.stderr or result.stdout
    if argv[0] == "gcloud" and any(sign in text for sign in AUTH_SIGNS):
        return UserError("gcloud is not logged in: run `gcloud auth login` (or `gcloud init`, which also picks the "
                         "project), then try again", field="gcloud")
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith("WARNING")), "")
    return UserError(f"`{' '.join(argv[:4])} ...` failed (exit {result.returncode}): {first[:300] or 'no message'}",
                     field=argv[0])


def gcloud_value(key: str) -> str:
    """A gcloud configuration value (`core/project`, `core/account`), '' when unset (gcloud prints "(unset)")."""
    value = run(["gcloud", "config", "get-value", key], check=False).stdout.strip()
    return "" if value == "(unset)" else value


def check_login() -> str:
    """The logged-in gcloud account; a UserError saying how to log in when there is none."""
    account = gcloud_value("core/account")
    if not account:
        raise UserError("gcloud is not logged in: run `gcloud init` (log in and pick a project) or "
                        "`gcloud auth login`, then try again", field="gcloud")
    return account


def default_project() -> str:
    project = gcloud_value("core/project")
    if not project:
        raise UserError("no Google Cloud project: pass --project ID, or set one with `gcloud config set project ID` "
                        "(`gcloud init` does both login and project)", field="project")
    return project
