"""Shared helpers for the TUI tests: fixed hardware reports (so snapshots do not depend on this
machine's kernel, disk or paths), hand-written run folders, and the screen as plain text."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from textual.app import App


def screen_text(app: App[Any]) -> str:
    """What the terminal shows, as lines of text (for asserts and for reading while debugging)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text.rstrip() for strip in strips)


def fixed_report(fixture_name: str = "2xL4", *, runs: str = "/home/user/.local/share/llm-wizard/runs"):
    """probe() against a fake NVML, with every machine-dependent field set to a constant."""
    from engine.fake_nvml import fixture
    from engine.hardware import TorchInfo, find_problems, probe

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


def write_events(run: Path, events: list[dict[str, Any]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with (run / "events.jsonl").open("a") as f:
        for e in events:
            f.write(json.dumps({"v": 1, "t": e.pop("t", time.time()), **e}) + "\n")
