"""Learning rates out of range are refused where the user types them (CLI, dashboard) and again where the job
applies them, so a stale or hand-written command cannot set inf, nan or 0 (RELIABILITY N8)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.errors import UserError
from engine.run import controls
from engine.run.controls import LRSchedule


def trainer(**kw: object) -> SimpleNamespace:
    base = dict(run=Path("/nowhere"), step=5, branch=1, paused=False, stop_reason=None,
                schedule=LRSchedule([3e-4], total_steps=100), watchdogs=SimpleNamespace(state={}))
    return SimpleNamespace(**{**base, **kw}, rollback=lambda info: None)


def test_the_job_refuses_a_set_lr_whose_learning_rate_leaves_the_range() -> None:
    t = trainer()
    for _ in range(2):  # two x1e300 once gave "learning rate now inf"
        ack = controls._execute(t, {"cmd": "set_lr", "factor": 1e300})
        assert not ack["ok"] and "from 1e-10 to 10" in ack["message"], ack
    assert t.schedule.multiplier == 1.0
    assert not controls._execute(t, {"cmd": "set_lr", "value": 50.0})["ok"]
    assert not controls._execute(t, {"cmd": "set_lr", "factor": 1e-9})["ok"]
    for bad in (float("inf"), float("nan"), 0):  # a hand-written line
        assert not controls._execute(t, {"cmd": "set_lr", "value": bad})["ok"]
    assert controls._execute(t, {"cmd": "set_lr", "factor": 0.5})["ok"] and t.schedule.multiplier == 0.5


def test_a_value_at_a_schedule_that_ends_at_zero_is_refused_not_a_crash() -> None:
    t = trainer(step=100, schedule=LRSchedule([3e-4], total_steps=100, kind="linear", min_ratio=0.0))
    ack = controls._execute(t, {"cmd": "set_lr", "value": 1e-4})
    assert not ack["ok"] and "LR is 0 at step 100" in ack["message"]


def test_rollback_and_rescue_factors_that_leave_the_range_are_not_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.checkpoints import store

    target = SimpleNamespace(name="step-000002", step=2)
    monkeypatch.setattr(store, "find", lambda run, ref: target)
    monkeypatch.setattr(store, "lineage", lambda run: [target])
    t = trainer()
    ack = controls._execute(t, {"cmd": "rollback", "step": 2, "lr_factor": 1e300})
    assert ack["ok"] and "lr_factor x1e+300 not applied" in ack["message"] and t.schedule.multiplier == 1.0
    ack = controls._execute(t, {"cmd": "rescue", "factor": 1e-12})
    assert not ack["ok"] and "not applied" in ack["message"] and t.schedule.multiplier == 1.0
    assert t.schedule.rescue_until is None


def cli(argv: list[str]) -> argparse.Namespace:
    from tui.commands import control

    parser = argparse.ArgumentParser()
    control.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(("argv", "words"), [
    (["r", "rollback", "10", "--lr-factor", "0"], "--lr-factor multiplies the learning rate: it must be a number above 0"),
    (["r", "lr", "nan"], "must be a number above 0, got nan"),
    (["r", "lr", "--value", "inf"], "must be from 1e-10 to 10"),
    (["r", "rescue", "--factor", "-1"], "--factor multiplies"),
    (["r", "rescue", "--steps", "0"], "--steps: a whole number from 1 up"),
])
def test_the_cli_refuses_factors_and_values_out_of_range(argv: list[str], words: str) -> None:
    from tui.commands import control

    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        control.command_args(cli(argv))


def test_the_cli_checks_the_learning_rate_a_factor_leads_to() -> None:
    from tui.commands import control

    cmd, extra = control.command_args(cli(["r", "lr", "1e300"]))
    with pytest.raises(UserError, match=r"would be 3e\+296: it must be from 1e-10 to 10 \(0.0003 x 1e\+300\)"):
        control.check_lr(cmd, extra, 3e-4)
    control.check_lr(cmd, {"factor": 0.5}, 3e-4)
    control.check_lr(cmd, extra, 0.0)  # a schedule at 0: the job decides


def test_the_dashboard_modal_checks_values_and_factors() -> None:
    from tui.modals.lr import factor_problem, parse_lr

    assert parse_lr("1e-4") == 1e-4 and parse_lr("inf") is None and parse_lr("nan") is None and parse_lr("0") is None
    assert factor_problem(1e-10, 0.1) and not factor_problem(1e-3, 0.1) and not factor_problem(None, 0.1)
