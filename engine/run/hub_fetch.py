"""A run's Hub models, downloaded inside the job before the first step (so a dropped SSH session does not
stop them), each pinned to the commit it resolved at launch.

The settings that may name a Hub id (model.path, options.teacher; tokenizer.path for its tokenizer files)
are resolved once: the commit is written to the run folder's hub.json before any byte arrives, and every
later start of the job (a resume, a restart after a kill mid-download) fetches and loads that commit, never
where the branch points now. Progress goes to events (`download`, about once a second) and status.json. The
token is only ever passed to huggingface_hub: hub.json holds ids and commits, nothing else.

Offline (HF_HUB_OFFLINE set) nothing is fetched: the loaders read the cache, pinned to hub.json's commits
when a connected start recorded them. A Hub that cannot be reached falls back to a complete cached snapshot
of the same commit, with an alert; otherwise the job fails with the reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.hub import connection as conn
from engine.hub import download as hubdl
from engine.hub import pins
from engine.hub import repo as hubrepo
from engine.hub.connection import HubError
from engine.runfolder import events as ev

HUB_FILE = "hub.json"  # {"model.path": {"repo": "org/name", "commit": "<40 hex>"}, ...}


def hub_settings(spec: Any) -> list[tuple[str, str]]:
    """(setting, Hub id) for each setting of `spec` that names a Hub id the technique will load."""
    found: list[tuple[str, str]] = []
    if spec.technique != "scratch" and hubrepo.is_hub_id(spec.model.path):
        found.append(("model.path", spec.model.path))
    teacher = spec.options.get("teacher") if isinstance(spec.options, dict) else None
    if isinstance(teacher, str) and hubrepo.is_hub_id(teacher):
        found.append(("options.teacher", teacher))
    if spec.tokenizer.path and hubrepo.is_hub_id(spec.tokenizer.path):
        found.append(("tokenizer.path", spec.tokenizer.path))
    return found


def read_pins(run: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((Path(run) / HUB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("commit"), str)} \
        if isinstance(data, dict) else {}


def _write_pins(run: Path, recorded: dict[str, dict[str, str]]) -> None:
    tmp = Path(run) / f".{HUB_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(recorded, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, Path(run) / HUB_FILE)


def fetch(run: Path, spec: Any, emit: Callable[[ev.Event], Any], status: Callable[..., None],
          should_stop: Callable[[], bool] | None = None) -> None:
    """Download every Hub id of `spec` (pinned), reporting through `emit` (events) and `status(message, download)`;
    `should_stop` true interrupts it (hubdl.DownloadStopped; the bytes so far stay for the next start)."""
    settings = hub_settings(spec)
    recorded = read_pins(run)
    for field, repo_id in settings:
        known = recorded.get(field)
        if known and known.get("repo") == repo_id:
            pins.pin(repo_id, known["commit"])
    if not settings or conn.offline_setting():
        return
    for field, repo_id in settings:
        known = recorded.get(field)
        pinned = known["commit"] if known and known.get("repo") == repo_id else ""
        revision = pinned or (spec.model.revision if field == "model.path" and spec.model.revision else None)
        try:
            info = hubrepo.repo_info(repo_id, revision=revision, field=field)
        except HubError as e:
            if _use_cache(repo_id, pinned, field, e, emit):
                continue
            raise
        if not pinned:  # recorded before the first byte: a kill mid-download resumes this very commit
            recorded[field] = {"repo": repo_id, "commit": info.commit}
            _write_pins(run, recorded)
        pins.pin(repo_id, info.commit)
        names = hubrepo.model_files(info) if field != "tokenizer.path" else \
            tuple(n for n in hubrepo.model_files(info) if not n.endswith((".safetensors", ".bin", ".pt", ".pth")))
        report = _reporter(field, emit, status)
        hubdl.download(info, names, field=field, progress=report, ref=None if pinned else (revision or "main"),
                       should_stop=should_stop)


def fetch_data(run: Path, repo_id: str, subset: str | None, split: str | None, emit: Callable[[ev.Event], Any],
               status: Callable[..., None], should_stop: Callable[[], bool] | None = None) -> Path:
    """A Hub dataset for this run (data.path = "org/name"): its files for `subset` / `split` in the Hub cache,
    pinned like the models (hub.json's "data.path"); returns the local snapshot folder. Offline, the cached
    snapshot of the recorded commit (or of main) when there is one."""
    from engine.hub import datasets as hubdata

    recorded = read_pins(run)
    known = recorded.get("data.path")
    pinned = known["commit"] if known and known.get("repo") == repo_id else ""
    setting = conn.offline_setting()
    if setting:
        commit = pinned or hubrepo.cached_commit(repo_id, "dataset") or ""
        folder = hubrepo.storage(repo_id, "dataset") / "snapshots" / commit
        if commit and folder.is_dir():
            return folder
        raise HubError(f"data.path: the dataset {repo_id} is not in the Hub cache and this machine is offline "
                       f"({setting} is set): unset it to download", field="data.path", reason="offline")
    if not pinned:
        pinned = hubrepo.repo_info(repo_id, kind="dataset", field="data.path").commit
        recorded["data.path"] = {"repo": repo_id, "commit": pinned}
        _write_pins(run, recorded)
    return hubdata.fetch_dataset(repo_id, subset=subset or None, split=split or None, revision=pinned,
                                 progress=_reporter("data.path", emit, status), should_stop=should_stop)


def fetch_run_data(run: Path, spec: Any, emit: Callable[[ev.Event], Any], status: Callable[..., None],
                   should_stop: Callable[[], bool] | None = None) -> None:
    """A Hub dataset of the spec (data.format = "hub"), downloaded and pinned like the model, and handed to the
    data layer so the technique reads that snapshot."""
    from engine.data.sources import use_snapshot

    d = spec.data
    if d.format == "hub":
        use_snapshot(d.path, d.subset, d.split, fetch_data(run, d.path, d.subset, d.split, emit, status, should_stop))


def _use_cache(repo_id: str, commit: str, field: str, error: HubError, emit: Callable[[ev.Event], Any]) -> bool:
    """The Hub cannot be reached, but the snapshot this run needs is cached: go on with it, and say so."""
    if error.reason != "unreachable":
        return False
    cached = commit or hubrepo.cached_commit(repo_id)
    if not cached or hubrepo.cached_commit(repo_id, revision=cached) is None:
        return False
    pins.pin(repo_id, cached)
    emit(ev.Alert(kind="hub", severity="warning", suggest=None,
                  message=f"{field}: {error}; training from the cached snapshot {cached[:12]} instead"))
    return True


def _reporter(field: str, emit: Callable[[ev.Event], Any], status: Callable[..., None]) -> Callable[[Any], None]:
    """Progress as events and status, at most about once a second; called from the download's meter thread
    and, for the last look, from the job's own (the lock keeps their writes apart)."""
    last, lock = [0.0], threading.Lock()

    def report(p: hubdl.Progress) -> None:
        with lock:
            _report(p)

    def _report(p: hubdl.Progress) -> None:
        now = time.monotonic()
        if not p.finished and now - last[0] < 0.9 and p.done_bytes:
            return
        last[0] = now
        event = ev.Download(repo=p.repo_id, field=field, commit=p.commit, done_bytes=p.done_bytes,
                            total_bytes=p.total_bytes, files_done=p.files_done, files_total=p.files_total,
                            rate=p.rate, eta_s=p.eta_s, finished=p.finished)
        emit(event)
        keys = {k: v for k, v in event.to_dict().items() if k not in ("v", "t", "type")}
        status(("downloaded " if p.finished else "downloading ") + p.line(), keys)

    return report
