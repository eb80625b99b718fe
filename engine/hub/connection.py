"""Where the Hub is, whether this machine reaches it, and which token it uses (never shown).

Everything is read from the environment when asked, not when imported (huggingface_hub reads HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE once, at its own import): the endpoint, cache folder and token are passed to
every huggingface_hub call explicitly. "Offline" is said only when it is true, with the reason: HF_HUB_OFFLINE
(or TRANSFORMERS_OFFLINE) is set, or the endpoint did not answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE = ("1", "on", "yes", "true")


class HubError(UserError):
    """A Hub request that failed for a reason the user can act on; `reason`: gated | missing | offline |
    unreachable | room | other."""

    def __init__(self, message: str, *, field: str | None = None, reason: str = "other") -> None:
        super().__init__(message, field=field)
        self.reason = reason


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """The Hub cache huggingface_hub and transformers use: HF_HUB_CACHE, else $HF_HOME/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def token() -> str | None:
    """The user's token: HF_TOKEN, else the one `hf auth login` stored. Pass it on; never print or write it."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"].strip() or None
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    stored = Path(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")).expanduser()
    try:
        return stored.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def offline_setting() -> str | None:
    """The environment variable that turns the Hub off, or None."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.strip().lower() in TRUE:
        return "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    return None


@dataclass(frozen=True)
class Reach:
    """Whether the Hub can be used now, and if not, why (said as a clause: "HF_HUB_OFFLINE is set")."""

    online: bool
    reason: str = ""


def reach(timeout: float = 3.0) -> Reach:
    """Online unless HF_HUB_OFFLINE is set or the endpoint does not answer within `timeout` seconds
    (any HTTP answer, even an error status, means it is reachable)."""
    import urllib.error
    import urllib.request

    setting = offline_setting()
    if setting:
        return Reach(False, f"{setting} is set (unset it to download)")
    url = endpoint() + "/api/models?limit=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return Reach(True)
    except urllib.error.HTTPError:
        return Reach(True)
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", e)
        return Reach(False, f"the Hub at {endpoint()} cannot be reached ({why})")


def repo_url(repo_id: str, kind: str = "model") -> str:
    return f"{endpoint()}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"


def login_hint() -> str:
    return "log in with `hf auth login` or set HF_TOKEN"


@dataclass(frozen=True)
class HubStatus:
    """`doctor`'s view of the Hub: reachable, a token set (never the token), the cache, fast transfer."""

    endpoint: str
    online: bool
    offline_reason: str
    token_set: bool
    token_from: str | None  # HF_TOKEN | stored (hf auth login) | None
    cache_dir: str
    cache_bytes: int
    hf_xet: str | None  # installed version: huggingface_hub's fast Xet transfers
    hf_transfer: str | None


def cache_bytes(folder: Path) -> int:
    """Bytes of the cache's blobs (the snapshots are links to them)."""
    total = 0
    for blobs in folder.glob("*/blobs"):
        for entry in os.scandir(blobs):
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total


def status(timeout: float = 3.0) -> HubStatus:
    import importlib.metadata as metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    r = reach(timeout)
    source = "HF_TOKEN" if os.environ.get("HF_TOKEN", "").strip() else "stored" if token() else None
    folder = cache_dir()
    return HubStatus(endpoint(), r.online, r.reason, source is not None, source, str(folder),
                     cache_bytes(folder) if folder.is_dir() else 0, version("hf_xet") or version("hf-xet"),
                     version("hf_transfer") or version("hf-transfer"))
