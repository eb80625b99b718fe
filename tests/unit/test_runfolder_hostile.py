"""The run folder's readers under hostile conditions (RELIABILITY H1-H8): what a careless hand or another
program leaves in commands.jsonl, events.jsonl and status.json, met the way a user meets it, through the
job's command reader and the CLI (`runs`, `control`, `attach`). A hang fails the test instead of the suite:
every CLI call runs in a daemon thread with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import cli
from run_helpers import wait_for

from engine import processes
from engine.errors import UserError
from engine.runfolder import commands as cmds
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.runfolder import status as st


def _cli(*argv: str) -> tuple[int | None, str]:
    return cli(*argv, timeout=15.0)


def _run(tmp_path: Path, name: str = "r") -> Path:
    return runfolder.create_run(tmp_path / "runs", name, "technique = 'scratch'\n")


def _live(run: Path, pid: int | None = None, **keys: Any) -> None:
    pid = pid or os.getpid()
    runfolder.write_status(run, {"state": "running", "pid": pid, "step": 3,
                                 "pid_start": processes.pid_start_time(pid), **keys})


# ---- H1: commands.jsonl changed under the job's reader ---------------------------------------------------

def test_H1_a_truncated_commands_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    run = _run(tmp_path)
    alerts: list[str] = []
    reader = runfolder.CommandReader(run, alert=alerts.append)
    sent = [runfolder.send_command(run, "save") for _ in range(3)]
    assert [c["id"] for c in reader.poll()] == sent
    os.truncate(run / cmds.COMMANDS_FILE, 0)  # `: > commands.jsonl`
    after = runfolder.send_command(run, "pause")
    assert [c["id"] for c in reader.poll()] == [after] and "truncated" in alerts[-1]


def test_H1_a_replaced_commands_file_is_read_from_its_start(tmp_path: Path) -> None:
    run = _run(tmp_path)
    alerts: list[str] = []
    reader = runfolder.CommandReader(run, alert=alerts.append)
    sent = [runfolder.send_command(run, "save") for _ in range(3)]
    assert [c["id"] for c in reader.poll()] == sent
    (run / cmds.COMMANDS_FILE).unlink()  # removed by hand; the next send makes a new, shorter file
    after = runfolder.send_command(run, "pause")
    assert [c["id"] for c in reader.poll()] == [after] and "replaced" in alerts[-1]


def test_H1_a_symlink_for_commands_is_refused_by_the_sender_and_the_reader(tmp_path: Path) -> None:
    run = _run(tmp_path)
    alerts: list[str] = []
    reader = runfolder.CommandReader(run, alert=alerts.append)
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps(cmds.build("stop").to_dict()) + "\n")
    (run / cmds.COMMANDS_FILE).symlink_to(elsewhere)
    assert reader.poll() == [] and "symbolic link" in alerts[-1]  # the stop over there is never run
    with pytest.raises(UserError, match="not sent: .*symbolic link"):
        runfolder.send_command(run, "pause")
    assert elsewhere.read_text().count("\n") == 1  # nothing appended to the link's target
    (run / cmds.COMMANDS_FILE).unlink()
    cid = runfolder.send_command(run, "pause")
    assert [c["id"] for c in reader.poll()] == [cid]


def test_H1_a_huge_unterminated_line_is_skipped_in_bounded_reads_and_the_next_command_arrives(tmp_path: Path) -> None:
    run = _run(tmp_path)
    alerts: list[str] = []
    reader = runfolder.CommandReader(run, alert=alerts.append)
    with open(run / cmds.COMMANDS_FILE, "ab") as f:
        f.write(b'{"id": "x", "cmd": "pause", "junk": "' + b"A" * (3 << 20))  # 3 MiB, no newline
    reads = []
    for _ in range(20):
        before = reader.pos
        assert reader.poll() == []
        reads.append(reader.pos - before)
        assert len(reader._buf) <= reader.MAX_LINE  # never held whole
    assert max(reads) <= reader.READ_CHUNK and "skipped" in alerts[-1]
    t0 = time.perf_counter()
    for _ in range(1000):
        reader.poll()  # nothing new: one lstat, whatever waits in the file
    assert time.perf_counter() - t0 < 0.5
    cid = runfolder.send_command(run, "pause")  # begins a line of its own after the torn one
    assert [c["id"] for c in reader.poll()] == [cid]


def test_H1_a_fifo_for_commands_or_events_never_hangs_the_cli(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _live(run)
    reader = runfolder.CommandReader(run, alert=(alerts := []).append)
    os.mkfifo(run / cmds.COMMANDS_FILE)
    assert reader.poll() == [] and "named pipe" in alerts[-1]
    code, out = _cli("control", str(run), "pause", "--timeout", "2")
    assert code == 2 and "not sent" in out and "named pipe" in out and "queued" not in out
    (run / cmds.COMMANDS_FILE).unlink()
    os.mkfifo(run / ev.EVENTS)
    code, out = _cli("attach", str(run), "--text")
    assert code == 2 and "named pipe" in out and "Traceback" not in out
    code, out = _cli("control", str(run), "pause", "--timeout", "2")
    assert code == 2 and "named pipe" in out and "queued" not in out


def test_H1_the_cli_refuses_a_commands_file_the_job_would_ignore(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _live(run)
    runfolder.send_command(run, "save")
    (run / cmds.COMMANDS_FILE).chmod(0o666)
    code, out = _cli("control", str(run), "pause", "--timeout", "1")
    assert code == 2 and "writable by other users" in out and "queued" not in out


# ---- H2: events.jsonl: huge lines, torn lines, size ------------------------------------------------------

def test_H2_an_event_written_after_garbage_or_a_huge_line_is_still_read(tmp_path: Path) -> None:
    run = _run(tmp_path)
    log = runfolder.EventLog(run)
    log.emit(ev.ControlAck(id="a", cmd="pause", step=1, ok=True, message="paused"))
    with open(run / ev.EVENTS, "ab") as f:
        f.write(b"\x00\xffgarbage" + b"B" * (3 << 20))  # no newline: the job's next line lands on it
    log.emit(ev.ControlAck(id="b", cmd="resume", step=1, ok=True, message="resumed"))
    log.close()
    batch = ev.read(run)
    assert [e.id for e in batch] == ["a", "b"] and "longer than" in batch.skipped[0].reason
    assert ev.wait_ack(run, "b", timeout=1) is not None


def test_H2_end_offset_and_last_read_a_big_log_from_its_end(tmp_path: Path) -> None:
    run = _run(tmp_path)
    line = ev.Alert(kind="x", message="m" * 300, step=1).to_json().encode() + b"\n"
    with open(run / ev.EVENTS, "wb") as f:
        for _ in range(30):
            f.write(line * ((1 << 20) // len(line)))  # about 30 MiB
        f.write(ev.Alert(kind="x", message="newest", step=2).to_json().encode() + b"\n")
    size = (run / ev.EVENTS).stat().st_size
    tracemalloc.start()
    try:
        assert ev.end_offset(run) == size
        last = ev.last(run, 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(last.events) == 20 and last.events[-1][0].message == "newest" and last.offset == size
    assert peak < 8 << 20  # what 20 events need, not the 30 MiB log


# ---- H3: one bad status.json ---------------------------------------------------------------------------

BAD_STATUS = {"not UTF-8": b"\xff\xfe{}", "a list": b"[1, 2]", "wrong types": b'{"state": "running", "step": "x"}',
              "no state": b'{"step": 3}', "folder": None, "fifo": None}


@pytest.mark.parametrize("kind", list(BAD_STATUS))
def test_H3_one_bad_status_is_listed_damaged_and_the_others_unaffected(tmp_path: Path, kind: str) -> None:
    good, bad, null = _run(tmp_path, "good"), _run(tmp_path, "bad"), _run(tmp_path, "null")
    runfolder.write_status(good, {"state": "done", "pid": 1, "step": 7, "technique": "scratch"})
    (null / st.STATUS).write_text('{"state": "stopped", "step": null, "loss": null}')
    path = bad / st.STATUS
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(BAD_STATUS[kind])
    runs = str(tmp_path / "runs")
    code, out = _cli("runs", "--runs-dir", runs)
    assert code == 0 and f"{bad.name}: damaged: status.json" in out and good.name in out and null.name in out
    code, out = _cli("runs", "--runs-dir", runs, "--json")
    listed = {r["id"]: r for r in json.loads(out)}
    assert listed[bad.name]["state"] == "damaged" and listed[good.name]["state"] == "done"
    code, out = _cli("control", good.name, "pause", "--runs-dir", runs)
    assert code == 2 and "finished" in out and "Traceback" not in out
    for command in (("control", bad.name, "pause"), ("attach", bad.name, "--text")):
        code, out = _cli(*command, "--runs-dir", runs)
        assert code == 2 and "status.json" in out and "Traceback" not in out


# ---- H4: stalled ---------------------------------------------------------------------------------------

def test_H4_a_job_stopped_by_a_signal_reads_stalled_and_control_says_so_at_once(tmp_path: Path) -> None:
    run = _run(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _live(run, child.pid)
        assert runfolder.current_status(run).state == "running"
        os.kill(child.pid, signal.SIGSTOP)
        wait_for(lambda: st.stopped(child.pid), 5, "the stop to take")
        status = runfolder.current_status(run)
        assert status.state == "stalled" and f"kill -CONT {child.pid}" in status.message
        code, out = _cli("runs", "--runs-dir", str(tmp_path / "runs"))
        assert "stalled" in out and "kill -CONT" in out
        t0 = time.monotonic()
        code, out = _cli("control", str(run), "pause", "--timeout", "30")
        assert code == 1 and "queued as command id" in out and "SIGSTOP" in out and time.monotonic() - t0 < 10
        os.kill(child.pid, signal.SIGCONT)
        wait_for(lambda: runfolder.current_status(run).state == "running", 5, "running again")
    finally:
        child.kill()
        child.wait()


def test_H4_no_heartbeat_for_long_reads_stalled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path)
    _live(run)
    monkeypatch.setenv("LLM_WIZARD_STALL_S", "0.2")
    time.sleep(0.4)
    status = runfolder.current_status(run)
    assert status.state == "stalled" and "no progress for" in status.message and status.live
    runfolder.write_status(run, {**runfolder.read_status(run), "state": "running"})  # it beats again
    assert runfolder.current_status(run).state == "running"


def test_H1_a_file_cut_and_grown_past_the_read_offset_is_read_again(tmp_path: Path) -> None:
    run = _run(tmp_path)
    reader = runfolder.CommandReader(run, alert=(alerts := []).append)
    sent = [runfolder.send_command(run, "save") for _ in range(3)]
    assert [c["id"] for c in reader.poll()] == sent
    size = (run / cmds.COMMANDS_FILE).stat().st_size
    os.truncate(run / cmds.COMMANDS_FILE, size - 30)  # cut mid-line; the next send makes it longer than before
    after = runfolder.send_command(run, "pause")
    assert (run / cmds.COMMANDS_FILE).stat().st_size > size
    got = reader.poll()
    assert after in [c["id"] for c in got] and "rewritten" in alerts[-1]


# ---- H8: branches.json edited by hand --------------------------------------------------------------------

def test_H8_an_edited_branches_json_is_named_by_the_resume(tmp_path: Path) -> None:
    from engine.checkpoints import store as ck

    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"w" * 64)

    ck.save(tmp_path, 10, 0, write)
    ck.save(tmp_path, 20, 0, write)
    ck.start_branch(tmp_path, "step-000010")  # a rollback: branch 1 grows from step 10
    ck.save(tmp_path, 15, 1, write)
    notes: list[str] = []
    assert ck.find_resume(tmp_path, log=notes.append).name == "step-000015-b1" and notes == []
    path = tmp_path / ck.CHECKPOINTS / ck.BRANCHES
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "active": 0}))  # switched back by hand
    assert ck.find_resume(tmp_path, log=notes.append).name == "step-000020"
    assert "branches.json was edited after the job wrote it" in notes[-1]
    path.write_text(json.dumps({"active": 1, "origins": {"0": None, "1": "step-000011"}}))  # no checksum: older job
    ck.find_resume(tmp_path, log=notes.append)
    assert "'step-000011', which is not a checkpoint" in notes[-1]


def test_H4_a_job_whose_steps_take_long_is_not_stalled_until_3x_its_longest_beat(tmp_path: Path) -> None:
    """A job beats at step boundaries: one whose steps or saves take minutes is silent that long, busy."""
    run = _run(tmp_path)
    _live(run)
    status = runfolder.read_status(run)
    now = time.time()
    runfolder.write_status(run, {**status, "state": "running", "beat_s": 300.0})
    busy = runfolder.current_status(run)
    assert st.no_progress(busy, now=now + 600) is None  # 600 s < 3 x 300 s
    assert "no progress for" in (st.no_progress(busy, now=now + 1000) or "")
    runfolder.write_status(run, {**status, "state": "running", "beat_s": 1.0})
    assert "no progress for" in (st.no_progress(runfolder.current_status(run), now=now + 600) or "")
