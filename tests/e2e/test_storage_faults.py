"""A run folder whose storage fails under a live job (RELIABILITY C4, C5, C6, C13): a real tmpfs filled
inside a save, to 0 bytes, and short of a checkpoint; an ext4 that the kernel turns read-only; a read-only
runs folder. The job pauses holding its state, says so, goes on by itself once the folder takes writes
again and loses nothing; made to exit meanwhile, `runs` names the storage, not the OOM killer.

Needs root to mount (CI runs as root); skipped with the reason where mounting is not permitted."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine.runfolder import folder as runfolder
from run_helpers import events, launch, make_corpus, resume, tiny_spec, wait_exit, wait_for, wait_step

pytestmark = pytest.mark.slow


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int = 0, name: str = "filler") -> Path:
    """Fill `folder`'s file system to 0 free bytes, then give back `leave` of them."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return path


def paused_by_storage(run: Path, what: str) -> dict:
    """What `runs` shows of a job blocked by its storage: paused, naming why, alive."""
    info = wait_for(lambda: (i := runfolder.run_info(run)).state == "paused" and i, 120, f"{what} pause")
    status = runfolder.read_status(run)
    assert what in status["message"] and "OOM" not in status["message"], status
    return status


def metric_steps(run: Path) -> list[int]:
    return sorted({e["step"] for e in events(run, "metrics")})


def test_C4_C5_C13_disk_full_inside_a_save_then_to_zero_then_short_of_a_checkpoint_goes_on_losing_nothing(tmp_path: Path,
                                                                                       tmpfs: Path) -> None:
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 16}, checkpoint={"every": 6, "keep": 2})
    run, pid = launch(s, tmpfs / "runs", step_sleep=0.15)
    wait_step(run, 2)
    # C4: room for status and event lines, not for the first checkpoint (no earlier one to size it by)
    almost = fill(tmpfs, leave=256 << 10)
    status = wait_for(lambda: (st := runfolder.read_status(run)).get("state") == "paused" and st, 120, "C4 pause")
    assert status["message"].startswith("disk full") and "no earlier checkpoint exists" in status["message"], status
    assert status["step"] == 6 and not list((run / "checkpoints").glob(".tmp-*"))  # its half save removed
    # C13: then to 0 bytes: the job's own status and event writes fail too
    rest = fill(tmpfs, name="filler2")
    paused_by_storage(run, "disk full")
    time.sleep(3)  # a retry or two meets the full disk
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # alive: it holds its state and waits, not dead on a status write
    rest.unlink()
    almost.unlink()  # space returns: the held status and events are written, the save retried by itself
    wait_step(run, 8)
    # C5: less free than the last checkpoint's size: the next save (step 12) waits before writing anything
    almost = fill(tmpfs, leave=256 << 10)
    status = wait_for(lambda: (st := runfolder.read_status(run)).get("step") == 12 and st["state"] == "paused" and st,
                      120, "C5 pause")
    assert status["message"].startswith("disk nearly full: only"), status
    assert not list((run / "checkpoints").glob(".tmp-*")) and not (run / "checkpoints" / "step-000012").exists()
    almost.unlink()
    assert wait_exit(pid, timeout=180) == 0
    status = runfolder.read_status(run)
    assert status["state"] == "done" and status["step"] == 16, status
    assert metric_steps(run) == list(range(1, 17))  # every step's line, held ones included
    assert {a["kind"] for a in events(run, "alert")} == {"disk_full", "low_disk"}
    assert [e["name"] for e in events(run, "checkpoint")][:1] == ["step-000006"]
    assert any("takes writes again" in e.get("message", "") for e in events(run, "state"))
    log = (run / runfolder.LOG).read_text()
    assert "paused at step 6: disk full" in log  # the notice, held for job.log while it could not be written
    for c in ck.list_checkpoints(run, include_invalid=True):
        assert ck.verify(c.path) is None, c.name


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 file system on a loop device, mounted errors=remount-ro: the kernel turns it read-only on an
    error, with files open for writing (a plain `remount,ro` is refused while the job holds them)."""
    image, mnt = tmp_path / "disk.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(48 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    done = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a loop device here ({done.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield image, mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def turn_read_only(mnt: Path) -> None:
    """What a disk error does to a file system mounted errors=remount-ro, through ext4's own test switch."""
    device = next(line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1] == str(mnt))
    Path(f"/sys/fs/ext4/{Path(os.path.realpath(device)).name}/trigger_fs_error").write_text("test")


def test_C13_folder_turned_read_only_mid_run_pauses_a_stop_says_why_and_a_resume_goes_on(
        tmp_path: Path, ext4: tuple[Path, Path]) -> None:
    image, mnt = ext4
    s = tiny_spec(make_corpus(tmp_path), train={"max_steps": 40}, checkpoint={"every": 2, "keep": 3})
    run, pid = launch(s, mnt / "runs", step_sleep=0.15)
    wait_step(run, 4)
    os.sync()  # the journal's abort drops what it has not committed (spec.toml too): not what is tested here
    turn_read_only(mnt)
    paused_by_storage(run, "not writable")
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # alive, holding its state
    os.kill(pid, signal.SIGTERM)  # made to exit while the folder still refuses writes
    assert wait_exit(pid, timeout=120) == 2
    info, status = runfolder.run_info(run), runfolder.read_status(run)
    assert info.state == "stopped" and status["message"].startswith("stopped: run folder not writable"), status
    assert "OOM" not in status["message"] and "resume from step" in status["message"]
    # the disk is repaired: the resume goes on from the last checkpoint to the end
    subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    pid = resume(run)
    assert wait_exit(pid, timeout=180) == 0, runfolder.read_status(run)["message"]
    assert runfolder.read_status(run)["state"] == "done"
    assert metric_steps(run)[-1] == 40


def test_C6_a_read_only_runs_folder_is_refused_before_anything_heavy(tmpfs: Path) -> None:
    from engine.errors import UserError

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(UserError, match="cannot write to the runs folder .*Read-only file system.*--runs-dir") as e:
        runfolder.create_run(tmpfs / "runs", "t", "name = 't'\n")
    assert e.value.exit_code == 2


def test_C13_resume_of_a_run_folder_turned_read_only_is_refused_saying_what_to_do(tmpfs: Path) -> None:
    """`train --resume` on a stopped run whose folder is now read-only: a one-line refusal before any job starts
    (its job.log could not even be opened), not a traceback from the launcher."""
    from engine.errors import UserError
    from engine.run import job

    run = job.create(tiny_spec(make_corpus(tmpfs)), tmpfs / "runs")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(UserError, match=r"cannot start: its folder .* is not writable \(Read-only file system\)"
                                        r".*train --resume"):
        job.launch(run, resume=True)
    assert not (run / runfolder.LOG).exists() and runfolder.read_status(run) == {}
