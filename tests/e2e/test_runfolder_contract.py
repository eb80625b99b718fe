"""The run folder's typed contract (engine/runfolder/events.py, commands.py, status.py): what a real job
writes is read back through the typed reader without loss; every event and command kind survives a round
trip; a bad line is skipped with its reason, never raised into a reader; a writer cannot write what its
reader would refuse."""

from __future__ import annotations

import json
import tomllib
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from engine import spec as spec_mod
from engine.errors import UserError
from engine.runfolder import commands as cmds
from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.runfolder import status as st
from engine.runfolder.record import Invalid, json_keys
from run_helpers import control, launch, make_corpus, wait_exit, wait_step

ROOT = Path(__file__).resolve().parents[2]


# ---- a real run, read back -------------------------------------------------------------------------

def tiny_preset(corpus: Path) -> spec_mod.RunSpec:
    """presets/tiny.toml, shortened: a small corpus, 40 steps with evaluations and checkpoints every 8."""
    data: dict[str, Any] = tomllib.loads((ROOT / "presets" / "tiny.toml").read_text())
    data["data"] = {**data["data"], "path": str(corpus), "val_fraction": 0.05}
    data["model"] = {**data["model"], "layers": 1, "width": 32, "heads": 2}
    data["train"] = {**data["train"], "seq_len": 32, "batch_size": 4, "max_steps": 40, "warmup_steps": 2}
    data["eval"], data["checkpoint"], data["log"] = {"every": 8, "batches": 2}, {"every": 8, "keep": 5}, {"every": 2}
    return spec_mod.from_dict(data)


@pytest.mark.slow
def test_a_real_runs_events_and_status_read_back_through_the_typed_reader_without_loss(tmp_path: Path) -> None:
    run, pid = launch(tiny_preset(make_corpus(tmp_path)), tmp_path / "runs", step_sleep=0.05)
    wait_step(run, 10)
    assert control(run, "pause")["ok"] and control(run, "set_lr", factor=0.5)["ok"]
    assert control(run, "save")["ok"] and control(run, "rollback", step=8)["ok"]
    with open(run / runfolder.COMMANDS_FILE, "a") as f:
        f.write('{"id": "bad-1", "cmd": "set_lr", "factor": "half"}\n')  # not a command: refused by id
    assert control(run, "resume")["ok"]
    assert wait_exit(pid) == 0

    lines = (run / runfolder.EVENTS).read_bytes().splitlines()
    batch = ev.read(run)
    assert batch.skipped == [] and len(batch.events) == len(lines)  # every line parsed
    for line, event in zip(lines, batch):
        raw = json.loads(line)
        assert event.extra == {}, f"keys the typed {type(event).__name__} does not declare: {event.extra}"
        assert set(raw) <= {"v", "t", "type", *json_keys(type(event))}  # every key is a field of the object
        assert event.to_dict() == raw and event.to_json().encode() == line  # re-serialised: the same line
    kinds = {type(e) for e in batch}
    assert {ev.State, ev.Metrics, ev.Eval, ev.Checkpoint, ev.ControlAck, ev.Done} <= kinds
    refused = [e for e in batch if isinstance(e, ev.ControlAck) and e.id == "bad-1"]
    assert len(refused) == 1 and not refused[0].ok and "factor" in refused[0].message
    assert any(isinstance(e, ev.State) and e.rollback_to == "step-000008" for e in batch)
    first = next(e for e in batch if isinstance(e, ev.Metrics))
    assert first.train_loss > 0 and first.train_lr > 0 and first.sys_rss  # the CPU: resident memory
    evals = [e for e in batch if isinstance(e, ev.Eval)]
    assert evals[0].best is True and all(e.best_step is not None and e.since_best is not None for e in evals)
    at_evals = [e for e in batch if isinstance(e, ev.Checkpoint) and e.step in {v.step for v in evals}]
    assert at_evals and all(e.eval_loss is not None for e in at_evals)  # a checkpoint's own eval loss
    done = [e for e in batch if isinstance(e, ev.Done)][-1]
    assert done.best_eval_loss == next(e.eval_loss for e in at_evals if e.name == done.best)  # the best, named
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())  # TensorBoard, by default

    raw_status = json.loads((run / st.STATUS).read_text())
    status = st.from_dict(raw_status)
    assert status.extra == {} and status.to_dict() == raw_status and status.state == "done"
    sent = [json.loads(line) for line in (run / runfolder.COMMANDS_FILE).read_text().splitlines()]
    for line in sent[:-2] + sent[-1:]:  # what `send_command` wrote (all but the hand-written line)
        assert cmds.from_dict(line).to_dict() == line


# ---- round trips ------------------------------------------------------------------------------------

def _sample(tp: Any, name: str) -> Any:
    """A value of annotation `tp` that is not its default (so that the field is written)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and typing.get_origin(tp) not in (list, dict):
        return _sample(args[0], name)
    origin = typing.get_origin(tp)
    if origin is list:
        return [_sample(typing.get_args(tp)[0], name), _sample(typing.get_args(tp)[0], name)]
    if origin is dict:
        return {"8": _sample(typing.get_args(tp)[1], name)}
    return {int: 7, float: 0.25, str: f"{name}-x", bool: True, Any: f"{name}-any"}[tp]


def _filled(cls: type) -> Any:
    hints = typing.get_type_hints(cls)
    values = {f.name: _sample(hints[f.name], f.name) for f in fields(cls) if f.init and f.name not in ("extra", "v")}
    if cls is st.Status:
        values["state"] = "running"
    if issubclass(cls, cmds.Command):
        values["id"] = "c-7"
    return cls(**values)


@pytest.mark.parametrize("cls", list(ev.KINDS.values()), ids=list(ev.KINDS))
def test_every_event_kind_round_trips_with_every_field(cls: type[ev.Event]) -> None:
    event = _filled(cls)
    line = event.to_json()
    data = json.loads(line)
    assert data["v"] == 1 and data["type"] == cls.TYPE and list(data)[:3] == ["v", "t", "type"]
    assert set(data) == {"v", "t", "type", *json_keys(cls)}  # every field written under its key
    back = ev.parse(line)
    assert back == event and back.to_json() == line
    minimal = ev.parse(json.dumps({k: v for k, v in data.items() if k in ("v", "t", "type") or
                                   next(f for f in fields(cls) if f.metadata.get("key", f.name) == k).default
                                   is not None}))  # the optional keys left out, as most events do
    assert type(minimal) is cls


@pytest.mark.parametrize("cls", list(cmds.KINDS.values()), ids=list(cmds.KINDS))
def test_every_command_kind_round_trips_through_the_file_and_the_jobs_reader(tmp_path: Path, cls: type) -> None:
    command = _filled(cls)
    assert cmds.parse(json.dumps(command.to_dict())) == command
    reader = cmds.CommandReader(tmp_path, 0)
    assert cmds.send(tmp_path, command) == "c-7"
    (got,) = reader.poll()
    assert got == command.to_dict() and got["cmd"] == cls.NAME and got["id"] == "c-7"


def test_status_round_trips_and_keeps_the_design_keys(tmp_path: Path) -> None:
    status = _filled(st.Status)
    written = st.write(tmp_path, status)
    assert written.updated is not None and st.read(tmp_path) is not None
    data = json.loads((tmp_path / st.STATUS).read_text())
    assert {"state", "pid", "step", "lr", "loss", "updated"} <= set(data)
    assert st.from_dict(data) == written
    assert {"id", "cmd", "ok", "step", "message"} <= set(json_keys(ev.ControlAck))  # control --json


def test_metrics_keep_their_slash_names_and_techniques_extras_on_disk() -> None:
    m = ev.Metrics.from_keys(step=3, epoch=0.1, tokens=96, eta_s=1.5, branch=0, **{
        "train/loss": 2.5, "train/lr": 1e-3, "train/grad_norm": 0.7, "train/tok_per_s": 900.0, "train/step_ms": 30.0,
        "train/mfu": None, "train/loss_smooth": 2.6, "sys/gpu_mem": 2**30, "moe/ce": 2.4, "moe/aux_loss": 0.01,
        "moe/expert_share": [0.5, 0.5], "distill/ce": 2.0, "distill/kl": 0.3})
    data = m.to_dict()
    assert data["train/loss"] == 2.5 and data["sys/gpu_mem"] == 2**30 and data["moe/expert_share"] == [0.5, 0.5]
    assert "train/mfu" in data and data["train/mfu"] is None  # always written: null says "no known peak"
    assert "sys/rss" not in data  # optional and absent: not written as null
    with pytest.raises(Invalid, match="undeclared keys train/made_up"):
        ev.Metrics.from_keys(**{**data, "train/made_up": 1.0})


# ---- bad lines and bad writes ----------------------------------------------------------------------

GOOD = ev.Eval(t=1.0, step=4, eval_loss=2.0, eval_ppl=7.39)


def test_malformed_lines_are_skipped_with_their_reason_and_the_rest_is_read(tmp_path: Path, capsys) -> None:
    from tui.cli import main
    from tui.screens.run_history import RunHistory

    run = runfolder.create_run(tmp_path, "bad", "technique = 'scratch'\n")
    good = GOOD.to_json()
    bad = {
        "not JSON": "{oops",
        "not a JSON object": "[1, 2]",
        "unknown event type 'gossip'": '{"v": 1, "t": 1.0, "type": "gossip"}',
        "event version 2": '{"v": 2, "t": 1.0, "type": "eval", "step": 1, "eval/loss": 1.0, "eval/ppl": 2.7}',
        "missing eval/ppl": '{"v": 1, "t": 1.0, "type": "eval", "step": 1, "eval/loss": 1.0}',
        "Eval.step: expected int, got 'four'": '{"v": 1, "t": 1.0, "type": "eval", "step": "four", '
                                                '"eval/loss": 1.0, "eval/ppl": 2.7}',
    }
    newer = json.dumps({**GOOD.to_dict(), "eval/accuracy": 0.9})  # a key a newer job added: kept
    text = "\n".join([good, *bad.values(), newer]) + "\n" + '{"v": 1, "type": "me'  # the last one half-written
    (run / runfolder.EVENTS).write_text(text)

    batch = ev.read(run)
    assert [e for e in batch] == [GOOD, ev.parse(newer)] and batch.events[1][0].extra == {"eval/accuracy": 0.9}
    assert batch.events[1][0].to_json() == newer
    assert len(batch.skipped) == len(bad)
    for (reason, line), skipped in zip(bad.items(), batch.skipped):
        assert reason in skipped.reason and skipped.text == line[:120]
        assert text.encode()[skipped.offset:].startswith(line.encode())  # where it is, for a person to look
    assert batch.offset == len(text.encode()) - len('{"v": 1, "type": "me')  # the partial line: next time

    history = RunHistory()
    for event in batch:
        history.apply(event)
    for skipped in batch.skipped:
        history.skip(skipped)
    assert history.val_loss == 2.0 and len(history.skipped) == len(bad) and "line skipped" in history.skipped[0]

    assert main(["attach", str(run), "--text"]) == 0  # the plain view: warnings, no traceback
    out = capsys.readouterr()
    assert "eval loss 2.0000" in out.out and out.err.count("line skipped") == len(bad) and "Traceback" not in out.err


def test_bad_commands_reach_the_job_as_refusals_and_are_never_run(tmp_path: Path) -> None:
    reader = cmds.CommandReader(tmp_path, 0)
    lines = ['{"id": "a1", "cmd": "rollback", "step": "ten"}', '{"id": "a2", "cmd": "pause", "now": true}',
             '{"id": "a3", "cmd": "explode"}', '{"cmd": "pause"}', "pause please"]
    (tmp_path / cmds.COMMANDS_FILE).write_text("\n".join(lines) + "\n")
    got = reader.poll()
    assert [c["cmd"] for c in got] == ["?"] * 5 and [c["id"] for c in got] == ["a1", "a2", "a3", None, None]
    for why, c in zip(("Rollback.step", "unknown keys now", "unknown command 'explode'", "no id", "not JSON"), got):
        assert why in c["invalid"]


def test_a_writer_cannot_write_what_its_reader_refuses(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="Checkpoint.step"):
        ev.Checkpoint(step="8", name="step-000008", branch=0, path="p", reason="interval", deleted=[])
    with pytest.raises(Invalid, match="ControlAck.ok"):
        ev.ControlAck(id="x", cmd="pause", step=1, ok="yes", message="paused")
    with pytest.raises(TypeError):
        ev.Alert(kind="nan", message="m", colour="red")  # a key the reader would not know
    log = ev.EventLog(tmp_path)
    with pytest.raises(TypeError, match="emit takes"):
        log.emit({"type": "metrics", "step": 1})  # type: ignore[arg-type]
    log.close()
    with pytest.raises(UserError, match="SetLr.factor"):
        runfolder.send_command(tmp_path, "set_lr", factor="half")
    with pytest.raises(UserError, match="unknown command"):
        runfolder.send_command(tmp_path, "explode")
    with pytest.raises(ValueError, match="status.json"):
        runfolder.write_status(tmp_path, {"state": "running", "pid": "me"})
    with pytest.raises(Invalid, match="Status.state"):
        st.Status(state="sleeping")
    assert not (tmp_path / cmds.COMMANDS_FILE).exists() and not (tmp_path / st.STATUS).exists()
    assert ev.read(tmp_path).events == []
