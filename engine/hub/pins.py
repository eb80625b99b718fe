"""The commits this process loads its Hub ids at: a run pins each Hub id to the commit it resolved at launch
(the run folder's hub.json), so loading, fingerprinting and a resume all read that snapshot, even after the
branch moved on the Hub or in the cache. Set once by the job before anything loads; empty elsewhere, where
a Hub id means whatever the cache's refs/main names."""

from __future__ import annotations

_PINS: dict[str, str] = {}


def pin(repo_id: str, commit: str) -> None:
    _PINS[repo_id] = commit


def pinned(repo_id: str) -> str:
    """The commit `repo_id` is pinned to in this process, or ""."""
    return _PINS.get(repo_id, "")


def clear() -> None:
    _PINS.clear()
