"""Push an export folder to a Hub model repo (created if missing) through huggingface_hub, which reads the
endpoint (HF_ENDPOINT) and the token (HF_TOKEN or a saved login) itself: the token is never passed, printed
or written here, and an error message is redacted before it is shown."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.runfolder.redact import redact

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id) or len(repo_id) > 96 or ".." in repo_id:
        raise UserError(f"--push: a Hub repo as ORG/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}",
                        field="push")
    return repo_id


def push(folder: Path, repo_id: str, *, private: bool = False, message: str | None = None,
         progress: Any = lambda _: None) -> dict[str, Any]:
    """{"repo", "url", "commit"}: every file of `folder` uploaded in one commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError("--push: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it and try again",
                        field="push")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now: the constant is fixed at import
    try:
        progress(f"creating {repo_id} on {api.endpoint} (if missing)")
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        progress(f"uploading {sum(1 for p in folder.rglob('*') if p.is_file())} files")
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=message or f"llm-wizard export of {folder.name}")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: "not logged in: `hf auth login`, or set HF_TOKEN",
                403: f"this token may not write to {repo_id.split('/')[0]}"}.get(status or 0, "")
        first = redact(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise UserError(f"--push to {repo_id} failed: {first}" + (f" ({hint})" if hint else ""), field="push") from None
    except Exception as e:  # noqa: BLE001 - the HTTP client's own errors (unreachable endpoint), whose module varies
        first = redact(str(e).splitlines()[0] if str(e) else "")
        raise UserError(f"--push to {repo_id} on {api.endpoint} failed: {type(e).__name__}: {first}",
                        field="push") from None
    return {"repo": repo_id, "url": str(url), "commit": getattr(commit, "oid", None)}
