"""Checkpoints that a kill can never leave half-written, on branches that a rollback never mixes.

Layout under <run>/checkpoints/:
  step-000500/          branch 0 (the run as started)
  step-000300-b1/       branch 1: started by a rollback; never shares a folder name with branch 0
  branches.json         {"active": 1, "origins": {"0": null, "1": "step-000200"}}
  .tmp-*                a save in progress (or killed): ignored, removed at start-up

A save writes every file into `.tmp-<name>-<pid>/`, fsyncs them, writes `manifest.json` (size and
sha256 of every file) last, renames the folder into place and fsyncs the parent. A folder without a
valid manifest is not a checkpoint. What goes into a checkpoint is up to the caller (`write_files`),
so techniques that save only an adapter use the same protocol.

`LLMW_CRASH_AT=<point>[:<n>]` ends the process with exit 137 at the n-th time (default first) it
reaches a crash point (`<point>:b<k>`: the first time during a save on branch k): ckpt:after_files, ckpt:before_manifest, ckpt:after_manifest,
ckpt:after_rename, ckpt:rotation. Tests use it to prove the protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
META = "meta.json"
BRANCHES = "branches.json"
_crash_hits: dict[str, int] = {}


def crash_point(name: str, branch: int | None = None) -> None:
    """Test hook: LLMW_CRASH_AT=<point>[:<n>] or <point>:b<branch> exits 137 at the n-th hit (default the
    first), or at the first hit during a save on that branch."""
    spec = os.environ.get("LLMW_CRASH_AT")
    if not spec:
        return
    point, _, arg = spec.rpartition(":")
    if not point or not (arg.isdigit() or (arg.startswith("b") and arg[1:].isdigit())):
        point, arg = spec, "1"
    if point != name:
        return
    if arg.startswith("b"):
        if branch == int(arg[1:]):
            os._exit(137)
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] == int(arg):
        os._exit(137)


def name_for(step: int, branch: int) -> str:
    return f"step-{step:06d}" + (f"-b{branch}" if branch else "")


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path
    step: int
    branch: int
    parent: str | None = None
    created: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "step": self.step, "branch": self.branch,
                "parent": self.parent, "created": self.created, "metrics": self.metrics}


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(run: Path, step: int, branch: int, write_files: Callable[[Path], None], *,
         parent: str | None = None, meta: dict[str, Any] | None = None, replace: bool = False) -> CheckpointInfo:
    """Write a checkpoint atomically; raises FileExistsError if that step already has one on this branch,
    unless `replace`: the same step saved again with newer controls state (an LR set after the interval
    save). The old folder is renamed to a `.tmp-` name first, so a kill between the two renames leaves
    the previous checkpoint as the newest, never a mixed folder."""
    root = Path(run) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = name_for(step, branch)
    final = root / name
    if final.exists() and not replace:
        raise FileExistsError(final)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_files(tmp)
        crash_point("ckpt:after_files", branch)
        created = time.time()
        info = {"step": step, "branch": branch, "parent": parent, "created": created, **(meta or {})}
        (tmp / META).write_text(json.dumps(info, indent=1))
        write_manifest(tmp, name=name, step=step, branch=branch,
                       crash=lambda: crash_point("ckpt:before_manifest", branch))
        crash_point("ckpt:after_manifest", branch)
        if final.exists():  # replace=True
            old = final.with_name(f".tmp-replaced-{name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    crash_point("ckpt:after_rename", branch)
    _fsync_path(root, directory=True)
    return CheckpointInfo(name, final, step, branch, parent, created, (meta or {}).get("metrics", {}))


def write_manifest(folder: Path, *, crash: Callable[[], None] | None = None, **fields: Any) -> None:
    """manifest.json, written last: size and sha256 of every file in `folder` (each fsynced first)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            _fsync_path(p)
            files[str(p.relative_to(folder))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    if crash:
        crash()
    with open(folder / MANIFEST, "w") as f:
        json.dump({"version": 1, **fields, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify(path: Path, *, full: bool = True) -> str | None:
    """None if the folder is whole (a checkpoint, or final/), else why not (sizes always, hashes when `full`).
    A manifest that lists no files vouches for nothing: it fails."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(w, dict) for w in files.values()):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid manifest"
    if not files:
        return "its manifest lists no files"
    for rel, want in files.items():
        p = path / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            return f"its manifest names {rel!r}, outside the folder"
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != want.get("size"):
            return f"{rel} has the wrong size"
        if full and _sha256(p) != want.get("sha256"):
            return f"{rel} is damaged (checksum mismatch)"
    return None


def _info(path: Path) -> CheckpointInfo | None:
    try:
        meta = json.loads((path / META).read_text())
        return CheckpointInfo(path.name, path, int(meta["step"]), int(meta["branch"]), meta.get("parent"),
                              float(meta.get("created", 0)), meta.get("metrics", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(run: Path, *, include_invalid: bool = False) -> list[CheckpointInfo]:
    """Committed checkpoints (manifest present, sizes right), by step then branch."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and (include_invalid or verify(p, full=False) is None):
            info = _info(p)
            if info:
                out.append(info)
    return sorted(out, key=lambda c: (c.step, c.branch))


def read_branches(run: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(run) / CHECKPOINTS / BRANCHES).read_text())
        return {"active": int(data["active"]), "origins": dict(data["origins"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"active": 0, "origins": {"0": None}}


def _branches_digest(data: dict[str, Any]) -> str:
    body = json.dumps({"active": data["active"], "origins": data["origins"]}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def branches_problem(run: Path) -> str | None:
    """Why checkpoints/branches.json is not as the job wrote it (None: it is, or there is none): not JSON,
    edited since (its sha256 no longer matches), or naming a branch or an origin that does not exist.
    Said wherever a resume follows it, so a hand edit never steers a resume silently."""
    path = Path(run) / CHECKPOINTS / BRANCHES
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"cannot be read ({e}); branch 0 is followed"
    if not isinstance(raw, dict) or not isinstance(raw.get("origins"), dict) or type(raw.get("active")) is not int:
        return "is not {\"active\": <int>, \"origins\": {...}}; branch 0 is followed"
    if "sha256" in raw and raw["sha256"] != _branches_digest(raw):
        return "was edited after the job wrote it (its sha256 does not match)"
    if str(raw["active"]) not in raw["origins"]:
        return f"makes branch {raw['active']} active, which has no origin recorded"
    names = {c.name for c in list_checkpoints(run, include_invalid=True)}
    for branch, origin in raw["origins"].items():
        if origin is not None and origin not in names:
            return f"says branch {branch} grows from {origin!r}, which is not a checkpoint of this run"
    return None


def start_branch(run: Path, origin: str) -> int:
    """Record a new branch growing from checkpoint `origin` and make it active (before any save on it)."""
    data = read_branches(run)
    used = {int(b) for b in data["origins"]} | {c.branch for c in list_checkpoints(run, include_invalid=True)}
    branch = max(used) + 1
    data["origins"][str(branch)] = origin
    data["active"] = branch
    root = Path(run) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{BRANCHES}.tmp"
    with open(tmp, "w") as f:
        json.dump({**data, "sha256": _branches_digest(data)}, f)  # a hand edit is told from the job's write
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / BRANCHES)
    _fsync_path(root, directory=True)
    return branch


def lineage(run: Path) -> list[CheckpointInfo]:
    """Checkpoints of the active branch's history, newest first: its own, then its origin and what came
    before the origin on the origin's branch, and so on. Abandoned branches' later steps never appear."""
    data = read_branches(run)
    by_name = {c.name: c for c in list_checkpoints(run, include_invalid=True)}
    out: list[CheckpointInfo] = []
    branch, limit = data["active"], None
    for _ in range(len(data["origins"]) + 1):
        own = [c for c in by_name.values() if c.branch == branch and (limit is None or c.step <= limit)]
        out += sorted(own, key=lambda c: -c.step)
        origin = data["origins"].get(str(branch))
        if not origin or origin not in by_name:
            break
        branch, limit = by_name[origin].branch, by_name[origin].step
    return out


def find_resume(run: Path, log: Callable[[str], None] | None = None, *,
                skip: Callable[[CheckpointInfo], str | None] | None = None) -> CheckpointInfo | None:
    """The newest checkpoint on the active lineage that passes a full check (and `skip`, which says why one
    cannot be used, e.g. a file its loader refused); damaged ones are skipped loudly, and a branches.json not
    as the job wrote it is named (then followed as it reads)."""
    if log and (problem := branches_problem(run)):
        log(f"checkpoints/{BRANCHES} {problem}: the resume follows it as it reads; to pick a checkpoint "
            "yourself, `llm-wizard control RUN rollback --checkpoint NAME` once it runs")
    for c in lineage(run):
        problem = verify(c.path, full=True) or (skip(c) if skip else None)
        if problem is None:
            return c
        if log:
            log(f"checkpoint {c.name} is not usable ({problem}); trying the one before it")
    return None


def find(run: Path, ref: str | int) -> CheckpointInfo:
    """A checkpoint by name or step (on the active lineage first, then anywhere)."""
    candidates = lineage(run) + list(reversed(list_checkpoints(run, include_invalid=True)))
    problems = []
    for c in candidates:
        if str(ref) == c.name or (str(ref).isdigit() and int(ref) == c.step):
            problem = verify(c.path, full=True)
            if problem is None:
                return c
            problems.append(f"{c.name}: {problem}")
    steps = ", ".join(str(c.step) for c in list_checkpoints(run)) or "none yet"
    why = f" ({'; '.join(dict.fromkeys(problems))})" if problems else ""
    raise UserError(f"no usable checkpoint {ref!r}{why}; usable checkpoints at steps: {steps}", field="step")


FINAL = "final"


def pick_model(run: Path, ref: str | None = None) -> tuple[Path, str, list[str]]:
    """What generate, chat, export and merge read: (folder, its name, notes). The asked checkpoint; else final/
    when it is newer than the newest usable checkpoint and whole; else that checkpoint. Each file the product
    wrote is verified first; what was passed over, and why, is in the notes (RELIABILITY C14)."""
    if ref is not None:
        c = find(run, ref)
        return c.path, c.name, []
    notes: list[str] = []
    newest = find_resume(run, log=notes.append)
    final = Path(run) / FINAL
    if final.is_dir() and (newest is None or final.stat().st_mtime >= newest.created):
        # final/ of a version that wrote no manifest is read unchecked
        problem = verify(final) if (final / MANIFEST).exists() else None
        if problem is None:
            return final, FINAL, []
        if newest is None:
            raise UserError(f"final/ of run {Path(run).name} is damaged ({problem}) and no checkpoint is usable: "
                            f"train it again (`llm-wizard train {Path(run) / 'spec.toml'}`)", field="run")
        notes.append(f"final/ is damaged ({problem}); using checkpoint {newest.name} instead")
    if newest is None:
        raise UserError(f"run {Path(run).name} has no usable checkpoint or final model yet"
                        + (f" ({'; '.join(notes)})" if notes else ""), field="run")
    return newest.path, newest.name, notes


def eval_score(c: CheckpointInfo) -> float:
    """A checkpoint's eval loss (taken at its own step), inf without one."""
    v = c.metrics.get("eval_loss")
    return float(v) if isinstance(v, (int, float)) else float("inf")


def best(run: Path, *, active_only: bool = True) -> CheckpointInfo | None:
    """The checkpoint with the lowest eval loss: on the active branch's lineage (what final/ may take), or on
    any branch; None while no checkpoint was saved at an evaluation."""
    found = lineage(run) if active_only else list_checkpoints(run)
    scored = [c for c in found if eval_score(c) < float("inf") and verify(c.path, full=False) is None]
    return min(scored, key=lambda c: (eval_score(c), -c.step)) if scored else None


def rotate(run: Path, keep: int, branch: int) -> list[str]:
    """Delete the oldest checkpoints of `branch` beyond `keep`, never the best one (by eval loss; by train loss
    while none has an eval loss), never a branch origin. Called only after a new checkpoint is committed.
    Returns the deleted names."""
    data = read_branches(run)
    origins = {o for o in data["origins"].values() if o}
    own = [c for c in list_checkpoints(run) if c.branch == branch]

    def train_score(c: CheckpointInfo) -> float:
        v = c.metrics.get("loss")
        return float(v) if isinstance(v, (int, float)) else float("inf")

    score = eval_score if any(eval_score(c) < float("inf") for c in own) else train_score
    scored = [c for c in own if score(c) < float("inf")]
    keeper = min(scored, key=score).name if scored else None
    deleted = []
    for c in own[: max(0, len(own) - keep)]:
        if c.name in origins or c.name == keeper:
            continue
        # Rename first so a kill mid-delete leaves a `.tmp-` folder (ignored), never a half checkpoint.
        doomed = c.path.with_name(f".tmp-del-{c.name}")
        os.rename(c.path, doomed)
        crash_point("ckpt:rotation")
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(c.name)
    return deleted


def clean_tmp(run: Path) -> list[str]:
    """Remove leftovers of saves that were killed (only our `.tmp-` folders, only in this run)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    removed = []
    for p in root.iterdir():
        if p.name.startswith(".tmp-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
