"""Every change `llm-wizard estimate --json` suggests is one `llm-wizard train --set` accepts, and the run it
configures is estimated at what the suggestion promised.

The estimate is asked through the real CLI for a full fine-tune that does not fit a small GPU (every kind
of suggestion fires); each suggestion's `changes` go to `llm-wizard train SPEC --set key=value
--print-launch` (the real CLI: the spec loaded, validated and written to a run folder, nothing started);
the run folder's spec.toml is then estimated again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine import spec as spec_mod
from engine import vocabulary
from engine.estimate.memory import EstimateRequest, estimate
from engine.estimate.request import RUN_LORA_RANK, RUN_VIRTUAL_TOKENS, request_from_spec
from run_helpers import make_corpus
from tui.cli import main

# A Llama of about 80M parameters, config only: the estimate and train's preflight read no weights.
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 16000, "hidden_size": 768,
          "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
          "max_position_embeddings": 2048, "tie_word_embeddings": False}
GPU_MEMORY = 2 * 2**30  # a GPU it does not fit: every suggestion fires
# each kind of change the estimator makes, by the spec fields it sets
KINDS = ({"train.gradient_checkpointing"}, {"train.optimizer"}, {"train.precision"},
         {"technique", "options.lora_rank"}, {"train.batch_size", "train.grad_accum"}, {"train.seq_len"},
         {"distributed.num_processes", "distributed.strategy"})


def _spec_file(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    s = spec_mod.from_dict({
        "technique": "full", "name": "fit", "model": {"path": str(model)},
        "data": {"path": str(make_corpus(tmp_path, lines=50))},
        "train": {"seq_len": 512, "batch_size": 4, "precision": "fp32", "optimizer": "adamw", "max_steps": 10,
                  "threads": 1}})
    path = tmp_path / "spec.toml"
    path.write_text(spec_mod.to_toml(s))
    return path


def _suggested(capsys: pytest.CaptureFixture[str], model: str) -> dict[str, Any]:
    args = ["estimate", "--model", model, "--technique", "full", "--precision", "fp32", "--optimizer", "adamw",
            "--batch-size", "4", "--seq-len", "512", "--lora-rank", str(RUN_LORA_RANK),
            "--num-virtual-tokens", str(RUN_VIRTUAL_TOKENS),
            "--gpu-memory", str(GPU_MEMORY), "--json"]
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def _set(key: str, value: Any) -> str:
    """The `--set` a user copies from the JSON: `train.optimizer=adamw8bit`, `train.gradient_checkpointing=true`."""
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def test_every_suggested_change_is_accepted_by_train_and_estimates_as_promised(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    spec_file = _spec_file(tmp_path)
    base = spec_mod.load(spec_file)
    out = _suggested(capsys, base.model.path)
    # the CLI's request is the spec's run: the promises are about this run
    assert request_from_spec(base, gpus=None) == EstimateRequest(**{
        **out["request"], "lora_targets": tuple(out["request"]["lora_targets"])})
    suggestions = out["suggestions"]
    fired = [set(s["changes"]) for s in suggestions]
    for kind in KINDS:
        assert kind in fired, f"no suggestion changed {sorted(kind)}: {fired}"
    runs = tmp_path / "runs"
    for s in suggestions:
        before = set(runs.iterdir()) if runs.exists() else set()
        sets = [word for k, v in s["changes"].items() for word in ("--set", _set(k, v))]
        with monkeypatch.context() as patch:
            if "distributed.strategy" in s["changes"]:
                # FSDP needs CUDA GPUs (the launcher's check of this machine); the question here is the spec's
                patch.setattr(torch.cuda, "is_available", lambda: True)
            code = main(["--runs-dir", str(runs), "train", str(spec_file), *sets, "--print-launch"])
        assert code == 0, (s["change"], capsys.readouterr())
        (run,) = set(runs.iterdir()) - before
        configured = spec_mod.load(run / "spec.toml")
        for key, value in s["changes"].items():
            section, _, name = key.rpartition(".")
            node = getattr(configured, section) if section else configured
            got = node.get(name) if isinstance(node, dict) else getattr(node, name)
            assert got == value, (key, got, value)
        gpus = [(i, "assumed", GPU_MEMORY) for i in range(configured.distributed.num_processes)]
        again = estimate(request_from_spec(configured), gpus=gpus, with_suggestions=False)
        assert again.total_bytes == s["total_bytes"], s["change"]


def test_no_suggestion_names_a_value_the_run_does_not_train() -> None:
    # Adafactor is counted by the estimator and trained by no run: never suggested
    for precision in ("fp32", "bf16", "bf16-pure"):
        for optimizer in ("adamw", "adafactor"):
            req = EstimateRequest(arch="llama", size="1B", technique="full", precision=precision, optimizer=optimizer,
                                  batch_size=8, seq_len=2048)
            est = estimate(req, gpus=[(0, "L4", 22 * 2**30)])
            assert est.suggestions
            for s in est.suggestions:
                assert s.changes.get("train.precision", "bf16") in spec_mod.PRECISIONS
                assert s.changes.get("train.optimizer", "adamw") in spec_mod.OPTIMIZERS
    assert "bf16-pure" in spec_mod.PRECISIONS and "adafactor" not in spec_mod.OPTIMIZERS
    assert spec_mod.from_dict({"train": {"precision": "bf16-pure"}}).train.precision == "bf16-pure"
    with pytest.raises(Exception, match="train.optimizer: unknown value 'adafactor'"):
        spec_mod.from_dict({"train": {"optimizer": "adafactor"}})


def test_pure_bf16_is_suggested_last_and_says_it_is_lossy() -> None:
    # it saves the most here (fp32 weights and AdamW states halve), and still comes after every lossless change
    for precision in ("fp32", "bf16"):
        req = EstimateRequest(arch="llama", size="1B", technique="full", precision=precision, batch_size=8,
                              seq_len=2048)
        suggestions = estimate(req, gpus=[(0, "L4", 22 * 2**30)]).suggestions
        pure = [s for s in suggestions if s.changes == {"train.precision": "bf16-pure"}]
        assert len(pure) == 1 and suggestions[-1] is pure[0], [s.change for s in suggestions]
        assert "lossy" in pure[0].change and "mixed bf16 is the safer choice" in pure[0].change
        lossless = suggestions[:-1]
        assert [s.saved_bytes for s in lossless] == sorted((s.saved_bytes for s in lossless), reverse=True)
    # not under DeepSpeed, whose spec refuses it
    req = EstimateRequest(arch="llama", size="1B", technique="full", precision="bf16", batch_size=8, seq_len=2048,
                          strategy="zero3", gpus=4)
    suggestions = estimate(req, gpus=[(i, "L4", 22 * 2**30) for i in range(4)]).suggestions
    assert suggestions and not [s for s in suggestions if s.changes.get("train.precision") == "bf16-pure"]
    with pytest.raises(Exception, match="bf16-pure trains in one process, or with ddp or fsdp"):
        spec_mod.from_dict({"train": {"precision": "bf16-pure"},
                            "distributed": {"num_processes": 2, "strategy": "zero2"}})


def test_the_estimators_former_names_read_as_the_specs() -> None:
    old = EstimateRequest(arch="llama", size="tiny", technique="full", precision="mixed-bf16", optimizer="adamw-8bit")
    assert (old.precision, old.optimizer) == ("bf16", "adamw8bit")
    assert vocabulary.precision("bf16").mixed and not vocabulary.precision("bf16-pure").mixed


def test_run_defaults_of_the_request_are_the_techniques() -> None:
    from engine.techniques import lora, prompt_tuning

    assert RUN_LORA_RANK == lora.DEFAULTS["lora_rank"]
    assert RUN_VIRTUAL_TOKENS == prompt_tuning.DEFAULTS["num_virtual_tokens"]


def test_estimator_and_base_import_no_circle_and_nothing_above() -> None:
    """grimp counts imports inside functions and under TYPE_CHECKING as edges: memory -> suggest -> breakdown
    -> params -> request, never back; the spec, its fields and the vocabulary import only the base."""
    import grimp

    graph = grimp.build_graph("engine", include_external_packages=False)
    wing = sorted(m for m in graph.modules if m.startswith("engine.estimate."))
    for i, a in enumerate(wing):
        for b in wing[i + 1:]:
            both = graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)
            assert not both, f"import circle between {a} and {b}"
    base = {"engine", "engine.errors", "engine.vocabulary", "engine.fields", "engine.spec", "engine.paths"}
    for module in ("engine.spec", "engine.fields", "engine.vocabulary"):
        assert graph.find_modules_directly_imported_by(module) <= base, module
