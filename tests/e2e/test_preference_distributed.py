"""Preference tuning on two processes over gloo (`accelerate launch`): DPO under LoRA with DDP (the reference
is the adapter switched off inside the wrapped model) and DPO as a full fine-tune sharded by DeepSpeed ZeRO-3
(FSDP needs CUDA), its reference log-probs precomputed by every rank and written once. Both ranks end on the
same weights, the pair metrics are logged, the run finishes. About 1 minute (DDP) and 3 minutes (ZeRO-3,
DeepSpeed's start) on the shared 2-core machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runfolder import folder as runfolder
from preference_helpers import preference_setup, preference_spec
from run_helpers import events, launch, wait_exit
from test_distributed_runs import PROBE, probe

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("strategy", "options"), [
    ("ddp", {"lora_rank": 4}),
    ("zero3", {"finetuning": "full", "reference": "precomputed"}),
], ids=["lora-ddp", "full-zero3-precomputed"])
def test_two_process_dpo(tmp_path: Path, strategy: str, options: dict) -> None:
    model, data = preference_setup(tmp_path, n=48)
    s = preference_spec("dpo", model, data, train={"max_steps": 8, "lr": 5e-3}, checkpoint={"every": 4},
                        distributed={"num_processes": 2, "strategy": strategy}, options=options)
    run, pid = launch(s, tmp_path / "runs", env={**PROBE, "LLM_WIZARD_CACHE": str(tmp_path / "cache")})
    assert wait_exit(pid, 300) == 0, (run / runfolder.LOG).read_text()[-3000:]
    ends = [[r for r in probe(run, rank) if r.get("end")][-1] for rank in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] == 8 and ends[0]["digest"] == ends[1]["digest"], ends
    metrics = events(run, "metrics")
    assert metrics and all("pref/margin" in m and "pref/accuracy" in m for m in metrics)
    if options.get("reference") == "precomputed":
        assert (run / "reference_logps.safetensors").is_file()
    assert events(run, "done")[-1]["state"] == "done"
