"""RELIABILITY S8 as another local user meets it: a commands.jsonl really owned by another uid (chown, as root),
not a faked stat: its commands are ignored with one alert."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.runfolder import folder as runfolder


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_S8_commands_file_really_owned_by_another_uid_is_ignored(tmp_path: Path) -> None:
    run = runfolder.create_run(tmp_path, "t", "name = 't'\n")
    alerts: list[str] = []
    reader = runfolder.CommandReader(run, alert=alerts.append)
    own = runfolder.send_command(run, "pause")
    assert [c["id"] for c in reader.poll()] == [own]
    runfolder.send_command(run, "stop")
    os.chown(run / runfolder.COMMANDS_FILE, 4242, 4242)
    assert reader.poll() == [] and reader.poll() == []
    assert len(alerts) == 1 and "uid 4242" in alerts[0] and "commands ignored" in alerts[0]
