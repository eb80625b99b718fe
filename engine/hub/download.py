"""Downloading a repo's files into the normal Hub cache: room checked first, resumable, with progress.

Each missing file is fetched by huggingface_hub's own `http_get` into `blobs/<etag>.incomplete` and renamed
to its blob when whole; a killed download leaves that file behind and the next try asks for the rest only
(an HTTP Range request). huggingface_hub 2.x itself drops a partial file, so the resumable step is ours
(Xet-stored files come through the same resolve URL, which the Hub redirects to its CDN). Then
`snapshot_download` at the same commit links the snapshot folder and records the file listing, exactly as
a plain `snapshot_download` would have left the cache.

Progress is measured from the cache folder (the bytes of every blob and partial blob of the planned files),
so it counts whatever the transfer path, and a resumed download starts at the bytes already there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.hub import connection as conn
from engine.hub import repo as hubrepo
from engine.hub.connection import HubError
from engine.hub.repo import HubFile, RepoInfo

MARGIN = 1.05  # room for the files plus a little: a disk filled to the last byte fails everything else
WORKERS = 4
# huggingface_hub reads 10 MiB before each write: a kill loses up to that, and progress moves in 10 MiB steps
CHUNK = 1 << 20


@dataclass(frozen=True)
class Progress:
    """One look at a download: bytes in the cache of the bytes planned, the rate, the time left."""

    repo_id: str
    kind: str
    commit: str
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int
    rate: float  # bytes per second, smoothed
    eta_s: float | None  # None: no rate yet
    finished: bool = False

    def line(self, bar: int = 0) -> str:
        return progress_line(self.repo_id, self.done_bytes, self.total_bytes, self.rate, self.eta_s, self.finished,
                             bar)


def progress_line(repo: str, done: int, total: int, rate: float, eta_s: float | None, finished: bool,
                  bar: int = 0) -> str:
    """`org/name ████░░░░ 45%  12.3 MB of 27.0 MB  5.1 MB/s  ETA 3s` (`bar` cells wide; 0: no bar): what
    the status message, `attach` and `train --foreground` show."""
    share = min(1.0, done / total) if total else 1.0
    cells = round(bar * share)
    drawn = f" {'█' * cells}{'░' * (bar - cells)}" if bar else ""
    eta = "" if finished or eta_s is None else f"  ETA {seconds(eta_s)}"
    return f"{repo}{drawn} {share:.0%}  {human(done)} of {human(total)}  {human(rate)}/s{eta}"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage("/").free


def check_room(info: RepoInfo, names: tuple[str, ...], field: str) -> int:
    """Bytes still to download; a HubError naming both numbers when the cache's disk cannot hold them."""
    blobs = hubrepo.storage(info.repo_id, info.kind) / "blobs"
    need = sum(f.size - _present(blobs, f) for f in hubrepo.missing(info, names))
    free = free_bytes(conn.cache_dir())
    if need * MARGIN > free:
        raise HubError(f"{field}: {info.repo_id} needs {human(need)} more in the Hub cache ({conn.cache_dir()}) "
                       f"but only {human(free)} is free there: free some space, or point HF_HOME (or HF_HUB_CACHE) "
                       "at a larger disk", field=field, reason="room")
    return need


def _present(blobs: Path, f: HubFile) -> int:
    """Bytes of `f` already in the cache: its blob, else its partial files (ours and huggingface_hub's)."""
    try:
        return min(f.size, (blobs / f.etag).stat().st_size)
    except OSError:
        pass
    total = 0
    for partial in blobs.glob(f"{f.etag}*.incomplete"):
        try:
            total = max(total, partial.stat().st_size)
        except OSError:
            pass
    return min(f.size, total)


class _Meter:
    """Polls the cache folder and reports Progress every `interval` seconds from a thread of its own."""

    def __init__(self, info: RepoInfo, files: list[HubFile], report: Callable[[Progress], None] | None,
                 interval: float) -> None:
        self.info, self.files, self.report, self.interval = info, files, report, interval
        self.blobs = hubrepo.storage(info.repo_id, info.kind) / "blobs"
        self.rate, self._last = 0.0, (time.monotonic(), self.done()[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hub-progress")

    def done(self) -> tuple[int, int]:
        sizes = [(_present(self.blobs, f), f.size) for f in self.files]
        return sum(d for d, _ in sizes), sum(1 for d, s in sizes if d >= s)

    def look(self, finished: bool = False) -> Progress:
        now, (done, files_done) = time.monotonic(), self.done()
        t0, d0 = self._last
        if now - t0 > 0.05:
            instant = max(0.0, (done - d0) / (now - t0))
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
            self._last = (now, done)
        total = sum(f.size for f in self.files)
        eta = (total - done) / self.rate if self.rate > 0 else None
        return Progress(self.info.repo_id, self.info.kind, self.info.commit, done, total, files_done,
                        len(self.files), round(self.rate, 1), None if eta is None else round(eta, 1), finished)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.report:
                self.report(self.look())

    def __enter__(self) -> _Meter:
        if self.report:
            self.report(self.look())
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class DownloadStopped(Exception):
    """The download was asked to stop (a run's stop or SIGTERM); what arrived stays in the cache to resume."""


def _quiet_tqdm(should_stop: Callable[[], bool] | None = None) -> type:
    """A silent progress bar (huggingface_hub's bars would fill job.log and a TUI's terminal) whose update,
    called for every piece that arrives, is also where a stop request interrupts a transfer."""
    from tqdm.auto import tqdm

    class Quiet(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if should_stop is not None and should_stop():
                raise DownloadStopped("stopped during the download")
            return super().update(n)

    return Quiet


def _fetch(info: RepoInfo, f: HubFile, token: str | None, should_stop: Callable[[], bool] | None = None) -> None:
    """One file into blobs/<etag>, resuming blobs/<etag>.incomplete when a previous try left one."""
    blobs = hubrepo.storage(info.repo_id, info.kind) / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    blob, partial = blobs / f.etag, blobs / f"{f.etag}.incomplete"
    with open(blobs / f".{f.etag}.llmw-lock", "w") as lock:  # several ranks of one run share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not hubrepo.missing(info, (f.path,)):
            return
        _fetch_locked(info, f, token, blob, partial, should_stop)


def _fetch_locked(info: RepoInfo, f: HubFile, token: str | None, blob: Path, partial: Path,
                  should_stop: Callable[[], bool] | None) -> None:
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK)
    url = hf_hub_url(info.repo_id, f.path, repo_type=info.kind, revision=info.commit, endpoint=conn.endpoint())
    headers = build_hf_headers(token=token or False)
    headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, not of a compressed stream
    with open(partial, "ab") as out:
        resume = out.tell()
        if resume > f.size:  # not this file after all: start again
            out.truncate(0)
            resume = 0
        http_get(url, out, resume_size=resume, headers=headers, expected_size=f.size, displayed_filename=f.path,
                 tqdm_class=_quiet_tqdm(should_stop))
    if partial.stat().st_size != f.size:
        raise HubError(f"{info.repo_id}/{f.path}: the download ended at {partial.stat().st_size} of {f.size} bytes; "
                       "run again to resume it", field="hub")
    os.replace(partial, blob)


def download(info: RepoInfo, names: tuple[str, ...], *, field: str = "model.path",
             progress: Callable[[Progress], None] | None = None, interval: float = 1.0,
             ref: str | None = None, should_stop: Callable[[], bool] | None = None) -> Path:
    """Fetch `names` of `info` (its commit) into the Hub cache; returns the snapshot folder. `ref`: the
    branch the commit was resolved from, recorded in the cache as huggingface_hub does (refs/<ref>).
    `should_stop` is asked for every piece that arrives: true raises DownloadStopped."""
    from huggingface_hub import snapshot_download

    token = conn.token()
    planned = [f for f in info.files if f.path in names]
    check_room(info, names, field)
    todo = hubrepo.missing(info, names)
    with _Meter(info, planned, progress, interval) as meter:
        try:
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                for future in [pool.submit(_fetch, info, f, token, should_stop) for f in todo]:
                    future.result()
            folder = snapshot_download(info.repo_id, repo_type=info.kind, revision=info.commit,
                                       allow_patterns=list(names), cache_dir=str(conn.cache_dir()),
                                       endpoint=conn.endpoint(), token=token or False, tqdm_class=_quiet_tqdm())
        except (HubError, DownloadStopped):
            raise
        except Exception as e:  # noqa: BLE001 - a Hub failure is said in one line; a partial file stays to resume
            if isinstance(e, OSError) and getattr(e, "errno", None) == 28:
                raise HubError(f"{field}: the disk of the Hub cache ({conn.cache_dir()}) filled up during the "
                               f"download of {info.repo_id}: free some space and run again (it resumes)",
                               field=field, reason="room") from None
            raise hubrepo.friendly(e, info.repo_id, info.kind, field, info.commit) from None
        if progress:
            progress(meter.look(finished=True))
    if ref and "/" not in ref and not hubrepo.COMMIT.fullmatch(ref):
        refs = hubrepo.storage(info.repo_id, info.kind) / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        tmp = refs / f".{ref}.{os.getpid()}.tmp"
        tmp.write_text(info.commit)
        os.replace(tmp, refs / ref)
    return Path(folder)


@dataclass(frozen=True)
class Snapshot:
    """A downloaded revision: the cache's snapshot folder and the commit it holds."""

    repo_id: str
    commit: str
    folder: Path
    bytes: int


def fetch_model(repo_id: str, *, revision: str | None = None, field: str = "model.path",
                progress: Callable[[Progress], None] | None = None, interval: float = 1.0) -> Snapshot:
    """A model's weights (safetensors when it has them), config, tokenizer and generation files at
    `revision` (a commit pins it; default main), into the Hub cache."""
    info = hubrepo.repo_info(repo_id, revision=revision, field=field)
    names = hubrepo.model_files(info)
    if not any(n.endswith((".safetensors", ".bin", ".pt", ".pth")) for n in names):
        raise HubError(f"{field}: {repo_id} at {info.commit[:12]} has no weight files (.safetensors or .bin): "
                       f"it is not a model transformers can load ({info.url})", field=field)
    folder = download(info, names, field=field, progress=progress, interval=interval,
                      ref=revision or "main")
    return Snapshot(repo_id, info.commit, folder, info.size(names))
