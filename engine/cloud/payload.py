"""What a run needs on the VM besides llm-wizard: the spec file, and its data, model and tokenizer where they are
local folders or files (a Hub id or "stdlib" is fetched on the VM). Each upload has its place under the remote work
folder and the `train --set` that points the spec there, so the spec file itself goes up unchanged. No environment
variable and no token file is ever part of it (a Hub token travels as HF_TOKEN in the launching process's
environment, never in a file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError

# Names that hold credentials (a Hugging Face token file, .env, .netrc, cloud keys, SSH keys): never sent to a VM.
SECRET_NAMES = re.compile(r"^(\.env|\.netrc|\.git-credentials|token|stored_tokens|[^/]*\.pem|id_[a-z0-9]+|"
                          r"credentials([^/]*\.json)?|application_default_credentials\.json|\.ssh|\.aws|\.gnupg)$",
                          re.IGNORECASE)
SCAN_LIMIT = 100_000  # names looked at inside a folder before giving up the scan (a huge dataset)


@dataclass(frozen=True)
class Upload:
    local: str  # absolute
    remote: str  # relative to the remote work folder
    setting: str  # the spec's dotted field it fills ("" for the spec itself)

    def override(self, work: str) -> str | None:
        """`setting=WORK/remote` for `train --set`; WORK is written `$HOME/...` so that the remote shell expands
        it (the spec's path fields do not expand `~`)."""
        return f"{self.setting}={work}/{self.remote}" if self.setting else None


def uploads(spec: Any, spec_path: str | Path) -> list[Upload]:
    path = Path(spec_path).expanduser().resolve()
    out = [Upload(str(path), "spec.toml", "")]
    for setting, value in (("data.path", spec.data.path), ("model.path", spec.model.path),
                           ("tokenizer.path", getattr(spec.tokenizer, "path", ""))):
        local = Path(value).expanduser() if value else None
        if local is None or not local.exists():
            continue
        if (secret := secret_in(local)) is not None:
            raise UserError(f"{setting}: {secret} looks like a credential: it is not sent to a VM (move it out of "
                            f"{local})", field=setting)
        section = setting.split(".")[0]
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", local.name) or section  # goes into a shell line unquoted
        out.append(Upload(str(local.resolve()), f"{section}/{safe}", setting))
    return out


def secret_in(path: Path) -> Path | None:
    """The first file or folder under `path` (itself included) whose name is a credential's, or None."""
    import os

    if SECRET_NAMES.match(path.name):
        return path
    if not path.is_dir():
        return None
    seen = 0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            if SECRET_NAMES.match(name):
                return Path(root) / name
        seen += len(dirs) + len(files)
        if seen > SCAN_LIMIT:
            return None
    return None


def overrides(items: list[Upload], work: str) -> list[str]:
    return [o for o in (u.override(work) for u in items) if o]
