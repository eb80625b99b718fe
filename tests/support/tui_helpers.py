"""Shared helpers for the TUI tests: fixed hardware reports (so snapshots do not depend on this
machine's kernel, disk or paths), hand-written run folders, and the screen as plain text."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from textual.app import App

import event_helpers
from engine.runfolder import events as ev


def screen_text(app: App[Any]) -> str:
    """What the terminal shows, as lines of text (for asserts and for reading while debugging)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text.rstrip() for strip in strips)


def fixed_report(fixture_name: str = "2xL4", *, runs: str = "/home/user/.local/share/llm-wizard/runs"):
    """probe() against a fake NVML, with every machine-dependent field set to a constant."""
    from engine.machine.fake_nvml import fixture
    from engine.machine.probe import TorchInfo, find_problems, probe

    report = probe(nvml=fixture(fixture_name), import_torch=False)
    report = dataclasses.replace(
        report,
        torch=TorchInfo(installed=True, version="2.13.0+cpu", cuda=None, cuda_available=False),
        packages={**{k: "1.0" for k in report.packages}, "bitsandbytes": "0.50.0"},
        python="3.12.3", platform="Linux 6.8.0 x86_64", nvcc_cuda=None, runs_dir=runs,
        disk_free_bytes=200 * 10**9,
    )
    report.problems = find_problems(report, system="Linux", release="6.8.0", bnb_libs=[])
    return report


def write_events(run: Path, events: list[ev.Event]) -> None:
    """Append typed events with the job's own writer (what the dashboard reads is what the job writes)."""
    event_helpers.write(run, events)


def checkpoint(step: int, t: float | None = None, branch: int = 0) -> ev.Checkpoint:
    name = f"step-{step:06d}" + (f"-b{branch}" if branch else "")
    return ev.Checkpoint(step=step, name=name, branch=branch, path=f"checkpoints/{name}", reason="interval",
                         deleted=[], **({"t": t} if t is not None else {}))


def fake_run(root: Path, *, steps: int = 300, every: int = 10, alert: bool = False, state: str = "running",
             pid: int | None = None, name: str = "20260101-120000-demo-abcd") -> Path:
    """A run folder as the job writes it: spec.toml, events.jsonl (falling loss, evals, checkpoints)
    and status.json. `pid` defaults to this test process, so the run reads as alive."""
    import math
    import os

    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "spec.toml").write_text('technique = "scratch"\nname = "demo"\n')
    t0 = 1_767_000_000.0
    events: list[ev.Event] = [ev.State(t=t0, state="running", step=0, message="training 1000 steps",
                                       total_steps=1000)]
    for step in range(every, steps + 1, every):
        loss = 2.2 + 3.3 * math.exp(-step / 80)
        events.append(event_helpers.metrics(step, loss=round(loss, 4), lr=3e-4 * min(1.0, step / 50), t=t0 + step,
                                            train_tok_per_s=10240.0, train_step_ms=100.0, epoch=step / 1000,
                                            eta_s=(1000 - step) * 0.1))
        if step % 100 == 0:
            val = round(loss + 0.08, 4)
            events.append(ev.Eval(t=t0 + step, step=step, eval_loss=val, eval_ppl=math.exp(val)))
            events.append(checkpoint(step, t0 + step))
    if alert:
        events.append(ev.Alert(t=t0 + steps, kind="plateau", step=steps, suggest="rescue",
                               message=f"the loss has hardly moved for 100 steps at {steps / 10:.0f}% of the data"))
    write_events(run, events)
    (run / "status.json").write_text(json.dumps({"state": state, "pid": pid or os.getpid(), "step": steps,
                                                 "lr": 3e-4, "loss": 2.3, "updated": time.time()}))  # a fresh
    # heartbeat: a live state without one for long reads as stalled
    return run


async def wait_until(pilot, condition, timeout: float = 10.0) -> None:  # noqa: ANN001 (Pilot, callable)
    """Let the app run until `condition()` holds (workers post messages; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {getattr(condition, '__name__', condition)}")
        await pilot.pause(0.05)


def commands(run: Path) -> list[dict[str, Any]]:
    path = run / "commands.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ack(run: Path, cmd: dict[str, Any], message: str = "ok", step: int = 300, **extra: Any) -> None:
    """Play the job: acknowledge a command the dashboard sent."""
    write_events(run, [ev.ControlAck(id=cmd["id"], cmd=cmd["cmd"], ok=True, step=step, message=message, **extra)])
