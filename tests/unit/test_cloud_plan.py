"""`llm-wizard cloud plan`: the GPU machine a spec needs, from the estimator's per-GPU memory, its price from the dated
table, the run time from FLOPs at the stated MFU, and its cost; the three presets README quotes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cloud_helpers import PRESETS, serve_llama2
from hub_server import HubServer, go_online

from engine import spec as spec_mod
from engine.cloud import plan as plan_mod
from engine.cloud import prices
from engine.errors import UserError
from engine.estimate.memory import estimate
from engine.estimate.request import request_from_spec
from tui.cli import main

THREE = {"scratch-1b.toml": [], "lora-llama2-7b.toml": ["--set", "train.max_steps=1000"], "full-llama2-13b.toml": []}


def test_price_table_is_dated_sourced_and_reproduces_the_books_figure():
    assert prices.PRICES_DATE and "skypilot-catalog" in prices.PRICES_SOURCE
    for m in prices.MACHINES:
        assert 0 < m.spot < m.on_demand, m
        assert m.gpu in prices.GPUS
    g2 = prices.machine_for("l4", 2, "us-central1")
    assert g2.machine_type == "g2-standard-24" and round(g2.on_demand, 2) == 2.00  # 5.1.1: "about $2 an hour"
    assert prices.machine_for("l4", 1, "europe-west4").on_demand > prices.machine_for("l4", 1, "us-central1").on_demand


def test_three_specs_plan_against_their_estimate(monkeypatch, capsys):
    with HubServer() as hub:
        serve_llama2(hub)
        go_online(monkeypatch, hub)
        plans = {}
        for name, extra in THREE.items():
            capsys.readouterr()
            assert main(["cloud", "plan", str(PRESETS / name), "--json", *extra]) == 0
            plans[name] = json.loads(capsys.readouterr().out)
        for name, p in plans.items():
            c = p["chosen"]
            assert c is not None and c["verdict"] != "no", name
            spec = spec_mod.load(PRESETS / name, [e for e in THREE[name] if e != "--set"])
            g = prices.GPUS[c["gpu"]]
            req = replace(request_from_spec(spec, gpus=c["count"]), strategy=c["strategy"])
            est = estimate(req, gpus=[(i, g.nvml, g.memory_bytes) for i in range(c["count"])], with_suggestions=False)
            assert c["per_gpu_bytes"] == est.total_bytes <= g.memory_bytes, name  # the estimator's own number
            assert c["cost"] == pytest.approx((c["seconds"] + plan_mod.SETUP_SECONDS) / 3600 * c["price_hour"]), name
            assert p["prices_date"] == prices.PRICES_DATE
            assert p["overrides"] == [f"distributed.num_processes={c['count']}",
                                      f"distributed.strategy={c['strategy']}"]
    scratch, lora, full = (plans[n] for n in THREE)
    assert scratch["tokens_source"].startswith("Chinchilla") and scratch["chosen"]["tokens"] == 20 * scratch["params"]
    assert lora["trainable_params"] < lora["params"] / 100  # the adapter alone trains
    assert lora["chosen"]["count"] == 1  # a 7B LoRA fits one GPU
    # 13B, every weight trained: nothing with one GPU fits; the plan shards it
    assert all(o["verdict"] == "no" for o in full["options"] if o["count"] == 1)
    assert full["chosen"]["count"] >= 2 and full["chosen"]["strategy"] == "fsdp"


def test_run_time_is_flops_over_throughput_at_the_stated_mfu():
    spec = spec_mod.load(PRESETS / "tiny.toml")
    a = plan_mod.plan(spec, gpus=("a100",), count=1, tokens=10**9, mfu=0.5)
    b = plan_mod.plan(spec, gpus=("a100",), count=1, tokens=10**9, mfu=0.25)
    o = a.chosen
    assert o.seconds == pytest.approx(10**9 * a.flops_per_token / (312e12 * 0.5))
    assert b.chosen.seconds == pytest.approx(2 * o.seconds)
    with pytest.raises(UserError, match="mfu"):
        plan_mod.plan(spec, mfu=1.5)
    with pytest.raises(UserError, match="unknown GPU"):
        plan_mod.plan(spec, gpus=("tpu",))


def test_spot_only_machines_are_chosen_only_with_spot():
    spec = spec_mod.load(PRESETS / "tiny.toml")
    on_demand = plan_mod.plan(spec, gpus=("h100",), tokens=10**6)
    assert on_demand.chosen is None and all(o.spot_only for o in on_demand.options)
    assert plan_mod.plan(spec, gpus=("h100",), tokens=10**6, spot=True).chosen.spot


def test_plan_prints_the_table_the_choice_and_the_commands(capsys):
    assert main(["cloud", "plan", str(PRESETS / "tiny.toml"), "--gpu", "l4", "--tokens", "1000000"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"prices of {prices.PRICES_DATE}" in out and "chosen: 1x L4 (g2-standard-4" in out
    assert "gcloud compute instances create llmw-tiny --zone ZONE --project PROJECT --machine-type=g2-standard-4" in out
