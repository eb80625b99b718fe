"""The learning-rate range test: its suggestion on a synthetic curve and on the tiny preset, where training with
the suggested LR lowers the loss and 10x it diverges or stalls well above it; --write changes only train.lr."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine import spec as spec_mod
from engine.run import job
from engine.run.trainer import Trainer
from engine.runfolder import folder as runfolder
from engine.sweep.lr_find import centred, lr_find, suggest, write_lr
from run_helpers import in_process_trainer, losses_by_step

PRESET = Path(__file__).resolve().parents[2] / "presets" / "tiny.toml"


def test_suggestion_on_a_known_curve() -> None:
    lrs = [1e-6 * 10 ** (i / 20) for i in range(121)]  # 1e-6 .. 1
    # flat, then falling fastest around 1e-3, lowest at 1e-2, then rising
    losses = [5 - 2 / (1 + math.exp(-(math.log10(x) + 3) * 4)) + max(0.0, math.log10(x) + 2) ** 2 for x in lrs]
    steep, low = suggest(lrs, centred(losses, 3))
    assert low == pytest.approx(1e-2, rel=0.3)
    assert steep == pytest.approx(1e-3, rel=0.3)


def test_write_sets_only_train_lr(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text("# mine\nname = \"x\"\n[model]\nlr = 5  # not this one\n[train]\nlr = 3e-3   # keep me\n"
                    "max_steps = 7\n")
    write_lr(spec, 0.00123)
    assert spec.read_text() == ("# mine\nname = \"x\"\n[model]\nlr = 5  # not this one\n[train]\nlr = 0.00123   "
                                "# keep me\nmax_steps = 7\n")
    bare = tmp_path / "b.toml"
    bare.write_text("[train]\nmax_steps = 7\n")
    write_lr(bare, 2e-4)
    assert spec_mod.load(bare).train.lr == 2e-4


def _final_loss(s: spec_mod.RunSpec, lr: float, runs: Path) -> tuple[float, str]:
    s = spec_mod.from_dict({**s.to_dict(), "train": {**s.to_dict()["train"], "lr": lr, "max_steps": 150,
                            "schedule": "constant", "warmup_steps": 0},
                            "eval": {"every": 0}, "checkpoint": {"every": 0, "keep": 2}})
    with in_process_trainer():
        run = job.create(s, runs)
        Trainer(run, s).run_job()
    losses = losses_by_step(runfolder.read_events(run)[0])
    last = [losses[k] for k in sorted(losses)[-3:]]
    first = losses[min(losses)]
    state = runfolder.read_status(run)["state"]
    return (sum(last) / len(last) if last else math.inf), f"{state}, first {first:.3f}"


@pytest.mark.slow
def test_tiny_preset_suggestion_trains_and_ten_times_it_does_not(tmp_path: Path) -> None:
    s = spec_mod.load(PRESET)
    with in_process_trainer():
        found = lr_find(s, steps=200, min_lr=1e-6, max_lr=1.0)
    assert len(found.lrs) >= 100 and found.lrs == tuple(sorted(found.lrs))
    assert 1e-5 < found.suggestion < 0.1 and found.suggestion == pytest.approx(found.min_loss_lr / 10)
    good, good_how = _final_loss(s, found.suggestion, tmp_path / "runs")
    bad, bad_how = _final_loss(s, 10 * found.suggestion, tmp_path / "runs")
    print(f"lr {found.suggestion:.3g}: {good:.3f} ({good_how}); 10x: {bad:.3f} ({bad_how})")
    assert good < 3.0  # from about 5.4 at initialisation (byte-level, 257 symbols)
    assert not math.isfinite(bad) or "paused" in bad_how or bad > good + 0.15  # diverged, paused, or stalled


@pytest.mark.slow
def test_cli_draws_the_curve_and_writes_the_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from run_helpers import make_corpus, tiny_spec
    from tui.cli import main

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec_mod.to_toml(tiny_spec(make_corpus(tmp_path, lines=300))))
    with in_process_trainer():
        assert main(["lr-find", str(spec_file), "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found["lrs"]) == len(found["losses"]) == len(found["smoothed"]) and found["method"].startswith("min/10")
    with in_process_trainer():
        assert main(["lr-find", str(spec_file), "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1", "--write"]) == 0
    shown = capsys.readouterr().out
    assert "suggested train.lr" in shown and "━ smoothed" in shown and "lr 1.0e-05" in shown
    assert spec_mod.load(spec_file).train.lr == pytest.approx(found["suggestion"], rel=0.01)  # same seed, same curve
