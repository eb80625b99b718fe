"""What the Hub says about a repo before anything is downloaded: files and sizes, gated, parameters, cached.

`repo_info` asks the Hub API (huggingface_hub's HfApi, with the user's token) for one revision; `model_files`
picks what a training run needs (safetensors weights when the repo has them, else its pickle weights, plus
config, tokenizer and generation files), so the size on disk shown and checked is what will arrive.
`friendly` turns huggingface_hub's exceptions into one-line UserErrors: gated or private (the URL to accept
the licence and how to log in), unknown repo or revision, offline (and why).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.hub import connection as conn
from engine.hub.connection import HubError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
COMMIT = re.compile(r"[0-9a-f]{40}")
# Beside the weights: what loading, tokenizing and generating read (and a model's own code, which the
# remote-code check reads before anything runs).
SIDE_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*.jinja", "tokenizer*", "merges*", "vocab*")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth")


def is_hub_id(value: str) -> bool:
    """`org/name` or `name` that is not a local path (a folder of that name wins, as transformers does)."""
    if not value or value.startswith((".", "/", "~")) or not HUB_ID.fullmatch(value):
        return False
    return not Path(value).expanduser().exists()


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    etag: str  # the blob's name in the cache: the LFS sha256, else the git blob id


@dataclass(frozen=True)
class RepoInfo:
    repo_id: str
    kind: str  # model | dataset
    commit: str
    files: tuple[HubFile, ...]
    gated: bool
    private: bool
    parameters: int | None  # the API's safetensors total, when it has one

    @property
    def url(self) -> str:
        return conn.repo_url(self.repo_id, self.kind)

    def size(self, names: tuple[str, ...] | None = None) -> int:
        return sum(f.size for f in self.files if names is None or f.path in names)


def model_files(info: RepoInfo) -> tuple[str, ...]:
    """The files a run downloads: those of the repo's top folder that transformers reads (subfolders hold
    other formats: onnx/, original/ consolidated weights, ...), safetensors only when the repo has them
    (never the .bin beside them)."""
    top = [f for f in info.files if "/" not in f.path]
    weights = ("*.safetensors",) if any(f.path.endswith(".safetensors") for f in top) else PICKLE_WEIGHTS
    patterns = weights + SIDE_FILES
    return tuple(f.path for f in top if any(fnmatch.fnmatch(f.path, p) for p in patterns)
                 and not f.path.startswith(("tf_", "flax_")))


def repo_info(repo_id: str, *, kind: str = "model", revision: str | None = None, field: str = "model.path",
              timeout: float = 10.0) -> RepoInfo:
    """The Hub's answer for `repo_id` at `revision` (a branch, tag or commit; default main)."""
    from huggingface_hub import HfApi

    reach = conn.offline_setting()
    if reach:
        raise HubError(f"{field}: {repo_id!r} cannot be looked up: this machine is offline ({reach} is set); "
                       "unset it, or use a model already in the Hub cache or a local folder", field=field,
                       reason="offline")
    api = HfApi(endpoint=conn.endpoint(), token=conn.token() or False)
    try:
        getter = api.dataset_info if kind == "dataset" else api.model_info
        raw = getter(repo_id, revision=revision, files_metadata=True, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes a one-line message
        raise friendly(e, repo_id, kind, field, revision) from None
    files = []
    for s in raw.siblings or []:
        lfs = getattr(s, "lfs", None)
        etag = (lfs.sha256 if lfs is not None else None) or s.blob_id or ""
        files.append(HubFile(s.rfilename, int(s.size or (lfs.size if lfs is not None else 0) or 0), etag))
    st = getattr(raw, "safetensors", None)
    return RepoInfo(repo_id, kind, str(raw.sha), tuple(files), bool(raw.gated), bool(raw.private),
                    int(st.total) if st is not None and getattr(st, "total", None) else None)


def friendly(e: BaseException, repo_id: str, kind: str, field: str, revision: str | None = None) -> HubError:
    """One line for a huggingface_hub failure: what happened and what to do."""
    from huggingface_hub import errors

    url = conn.repo_url(repo_id, kind)
    what = "dataset" if kind == "dataset" else "model"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, HubError):
        return e
    refused = status in (401, 403) and not isinstance(e, errors.RepositoryNotFoundError)
    if isinstance(e, errors.GatedRepoError) or refused:
        who = ("no token is set" if not conn.token() else
               "the token set here has no access to it yet" if status == 403 else "the token set here was refused")
        return HubError(f"{field}: {repo_id!r} is a gated or private {what} ({status or 'refused'}: {who}); accept "
                        f"its licence at {url} with your Hugging Face account, then {conn.login_hint()} on this "
                        "machine", field=field, reason="gated")
    if isinstance(e, errors.RevisionNotFoundError):
        return HubError(f"{field}: {repo_id!r} has no revision {revision!r} on the Hub ({url})", field=field,
                        reason="missing")
    if isinstance(e, errors.RepositoryNotFoundError):
        token = "" if conn.token() else f"; if it is private, {conn.login_hint()}"
        return HubError(f"{field}: no {what} {repo_id!r} on the Hub ({url}): check the id (org/name){token}",
                        field=field, reason="missing")
    if isinstance(e, errors.OfflineModeIsEnabled):
        return HubError(f"{field}: {repo_id!r} cannot be fetched: this machine is offline (HF_HUB_OFFLINE is set)",
                        field=field, reason="offline")
    name = type(e).__name__
    if "Connect" in name or "Timeout" in name or isinstance(e, (ConnectionError, TimeoutError)):
        return HubError(f"{field}: {repo_id!r} cannot be fetched: this machine is offline (the Hub at "
                        f"{conn.endpoint()} cannot be reached: {name}); check the network or HF_ENDPOINT",
                        field=field, reason="unreachable")
    first = (str(e).strip().splitlines() or [name])[0]
    return HubError(f"{field}: the Hub answered {status or name} for {repo_id!r}: {first}", field=field)



def cached_commit(repo_id: str, kind: str = "model", revision: str = "main") -> str | None:
    """The commit `revision` points to in the local cache (no network), or None."""
    ref = conn.cache_dir() / folder_name(repo_id, kind) / "refs" / revision
    if COMMIT.fullmatch(revision):
        return revision if (conn.cache_dir() / folder_name(repo_id, kind) / "snapshots" / revision).is_dir() else None
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def folder_name(repo_id: str, kind: str = "model") -> str:
    return f"{kind}s--" + repo_id.replace("/", "--")


def storage(repo_id: str, kind: str = "model") -> Path:
    return conn.cache_dir() / folder_name(repo_id, kind)


def missing(info: RepoInfo, names: tuple[str, ...]) -> list[HubFile]:
    """The files of `names` whose blob is not complete in the cache."""
    blobs = storage(info.repo_id, info.kind) / "blobs"
    return [f for f in info.files if f.path in names and not _complete(blobs / f.etag, f.size)]


def _complete(blob: Path, size: int) -> bool:
    try:
        return blob.stat().st_size == size
    except OSError:
        return False


def describe(info: RepoInfo, names: tuple[str, ...]) -> dict[str, Any]:
    """The Model step's facts: size on disk, parameters, gated, cached."""
    return {"repo": info.repo_id, "commit": info.commit, "bytes": info.size(names), "parameters": info.parameters,
            "gated": info.gated, "cached": not missing(info, names), "files": len(names)}


def fetch_file(repo_id: str, filename: str, *, kind: str = "model", revision: str | None = None,
               field: str = "model.path", timeout: float = 10.0) -> Path:
    """One small file of a repo (config.json, tokenizer files) through the Hub cache: the cached copy when
    there is one (no network), else downloaded with the user's token; a HubError says why not."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for cache in (None, str(conn.cache_dir())):  # huggingface_hub's own location, then the environment's now
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision, repo_type=kind)
        if isinstance(found, str):
            return Path(found)
    setting = conn.offline_setting()
    if setting:
        raise HubError(f"{field}: {repo_id} is not in the local Hub cache and this machine is offline ({setting} "
                       "is set): unset it to download, or pass a local folder", field=field, reason="offline")
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=kind, revision=revision,
                                    cache_dir=str(conn.cache_dir()), endpoint=conn.endpoint(),
                                    token=conn.token() or False, etag_timeout=timeout))
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes a one-line message
        raise friendly(e, repo_id, kind, field, revision) from None
