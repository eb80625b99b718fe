"""The estimator's arithmetic, rules, verdicts, suggestions and errors, and `llm-wizard estimate`."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.estimate.memory import (
    CUDA_CONTEXT_BYTES, FRAGMENTATION_MARGIN, NF4_BITS, EstimateRequest, estimate, measurable, total_for, verdict,
)
from engine.models.shape import dims_from_config, load_dims, scratch_config
from tui.cli import main

GiB = 1 << 30


def _meta_count(config: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    return sum(p.numel() for p in model.parameters())


SMALL_LLAMA = dict(model_type="llama", vocab_size=1000, hidden_size=64, intermediate_size=160,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("config", [
    scratch_config("gpt2", 2, 64, 2, None, 256, 1000, 128),
    scratch_config("llama", 22, 2048, 32, 4, 5632, 32000, 2048),  # TinyLlama 1.1B
    SMALL_LLAMA,
    {**SMALL_LLAMA, "tie_word_embeddings": True},
    {**SMALL_LLAMA, "model_type": "mistral"},
    {**SMALL_LLAMA, "model_type": "qwen2"},  # q/k/v biases
    {**SMALL_LLAMA, "model_type": "qwen3", "head_dim": 32},  # q/k norms, explicit head_dim
    {**SMALL_LLAMA, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
], ids=["gpt2", "tinyllama-1.1B", "llama", "llama-tied", "mistral", "qwen2", "qwen3", "mixtral"])
def test_parameter_count_matches_the_model_built_on_the_meta_device(config: dict) -> None:
    assert dims_from_config(dict(config)).params == _meta_count(config)


def test_unknown_model_types_are_counted_on_the_meta_device(tmp_path: Path) -> None:
    cfg = dict(model_type="gpt_neox", vocab_size=500, hidden_size=64, num_hidden_layers=3,
               num_attention_heads=4, intermediate_size=128)
    d = dims_from_config(cfg)  # one layer built, repeated: the same tensors as the whole model
    assert d.family == "other" and d.params == _meta_count(cfg) and d.layers == 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    req = EstimateRequest(model=str(tmp_path), technique="full", batch_size=1, seq_len=64)
    # without measuring: the formula at once, and it says so
    first = estimate(req, gpus=[], measure=False)
    assert first.sources["activations"].startswith("formula") and any("gpt_neox" in n for n in first.notes)
    assert measurable(req, first)
    said: list[str] = []
    est = estimate(req, gpus=[], note=said.append)
    assert est.sources["activations"].startswith("measured") and said and not measurable(req, est)
    assert not any("gpt_neox" in n for n in est.notes)
    again = estimate(req, gpus=[], measure=False)  # from the cache now
    assert again.peak_bytes == est.peak_bytes and again.sources == est.sources


def test_7b_llama_is_arithmetic_and_answers_in_under_a_second() -> None:
    code = ("import sys, time; t = time.perf_counter(); from tui.cli import main; "
            "main(['estimate', '--arch', 'llama', '--size', '7B', '--technique', 'scratch', '--gpu-memory', "
            "'80GB', '--json']); assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "print(time.perf_counter() - t, file=sys.stderr)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert 6.7e9 < data["model"]["params"] < 6.8e9  # Llama 2 7B: 6.74B
    # CPU time, interpreter start included: what an idle machine's wall clock shows (this one is
    # shared, so its wall clock only gets a loose bound)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, f"took {cpu:.2f} s of CPU"
    assert wall < 5.0, f"took {wall:.2f} s"


def test_rule_of_thumb_is_the_books() -> None:
    one_b = dict(arch="llama", size="1B", seq_len=512, batch_size=1)
    for technique, factor in (("scratch", 4), ("full", 4), ("lora", 2), ("qlora", 1)):
        est = estimate(EstimateRequest(technique=technique, **one_b), gpus=[])
        assert est.rule_of_thumb.bytes == factor * est.model.params
        assert "rule of thumb" in est.rule_of_thumb.label
        assert est.to_dict()["rule_of_thumb_bytes"] == factor * est.model.params
    # the book: a 1B model from scratch needs more than 4 GB, "at least 5-6 GB with batch and context"
    est = estimate(EstimateRequest(technique="scratch", precision="bf16-pure", **one_b), gpus=[])
    assert est.rule_of_thumb.bytes > 4e9 and est.peak_bytes > 5e9


def test_breakdown_follows_precision_optimizer_and_technique() -> None:
    base = dict(arch="llama", size="1B", seq_len=256, batch_size=1)
    fp32 = estimate(EstimateRequest(technique="full", precision="fp32", **base), gpus=[])
    p = fp32.model.params
    assert fp32.breakdown.weights == 4 * p and fp32.breakdown.gradients == 4 * p
    assert fp32.breakdown.optimizer_states == pytest.approx(8 * p, rel=1e-4)  # AdamW: 2 fp32 moments
    bf16 = estimate(EstimateRequest(technique="full", precision="bf16-pure", optimizer="sgd", **base), gpus=[])
    assert bf16.breakdown.weights == 2 * p and bf16.breakdown.optimizer_states == 2 * p  # momentum
    eight = estimate(EstimateRequest(technique="full", precision="fp32", optimizer="adamw8bit", **base), gpus=[])
    assert eight.breakdown.optimizer_states == pytest.approx(2 * p, rel=0.05)
    mixed = estimate(EstimateRequest(technique="full", precision="bf16", **base), gpus=[])
    assert mixed.breakdown.autocast_copies > 0 and fp32.breakdown.autocast_copies == 0
    qlora = estimate(EstimateRequest(technique="qlora", **base), gpus=[])
    nf4 = qlora.breakdown.weights_by_dtype["nf4"]
    linear = sum(t.numel for t in qlora_dims().tensors if t.kind == "linear" and t.layer is not None)
    assert nf4 == pytest.approx(linear * NF4_BITS / 8, rel=1e-3)  # 4.13 bits a parameter, plus code tables
    assert qlora.breakdown.gradients < 0.01 * fp32.breakdown.gradients


def qlora_dims():  # noqa: ANN201
    return load_dims(arch="llama", size="1B")


def test_checkpointing_and_phases() -> None:
    req = EstimateRequest(arch="llama", size="125M", technique="scratch", precision="bf16-pure", batch_size=16, seq_len=2048,
                          vocab_size=4096)  # a small vocabulary: the layers, not the logits, dominate
    plain = estimate(req, gpus=[])
    ckpt = estimate(EstimateRequest(**{**req.__dict__, "grad_checkpointing": True}), gpus=[])
    assert plain.peak_phase == "backward" and ckpt.peak_bytes < 0.5 * plain.peak_bytes
    # the trainer's fused AdamW keeps no parameter-sized temporary: its step holds weights, gradients and
    # states only, less than the end of the backward (which also holds what the backward still uses)
    step = estimate(EstimateRequest(arch="llama", size="1B", technique="scratch", batch_size=1, seq_len=64), gpus=[])
    bd = step.breakdown
    assert bd.optimizer_step_temp == 0
    assert step.phases[-1].bytes == bd.weights + bd.gradients + bd.optimizer_states + bd.inputs
    assert step.peak_phase == "backward"


def test_margins_and_verdicts() -> None:
    assert total_for(10 * GiB) == int(10 * GiB * (1 + FRAGMENTATION_MARGIN)) + CUDA_CONTEXT_BYTES
    assert verdict(50, 100) == "fits" and verdict(95, 100) == "tight" and verdict(101, 100) == "no"
    req = EstimateRequest(arch="llama", size="1B", technique="scratch", precision="bf16-pure", batch_size=1, seq_len=512)
    est = estimate(req, gpus=[(0, "a", 80 * GiB), (1, "b", est_total(req) - 1)])
    assert [g.verdict for g in est.gpus] == ["fits", "no"]
    assert est.gpus[0].needed_bytes == est.total_bytes


def est_total(req: EstimateRequest) -> int:
    return estimate(req, gpus=[]).total_bytes


def test_probed_gpus_come_from_the_hardware_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    est = estimate(EstimateRequest(arch="llama", size="7B", technique="full", batch_size=1, seq_len=512))
    assert len(est.gpus) == 2 and all(g.name == "NVIDIA L4" and g.verdict == "no" for g in est.gpus)
    assert est.suggestions


def test_sharding_lowers_the_per_gpu_peak() -> None:
    base = dict(arch="llama", size="7B", technique="full", precision="bf16-pure", batch_size=1, seq_len=1024)
    one = estimate(EstimateRequest(**base, gpus=1), gpus=[]).peak_bytes
    ddp = estimate(EstimateRequest(**base, gpus=4, strategy="ddp"), gpus=[]).peak_bytes
    zero2 = estimate(EstimateRequest(**base, gpus=4, strategy="zero2"), gpus=[]).peak_bytes
    fsdp = estimate(EstimateRequest(**base, gpus=4, strategy="fsdp"), gpus=[]).peak_bytes
    assert ddp > one > zero2 > fsdp


def test_suggestions_are_ranked_and_each_has_its_new_total() -> None:
    req = EstimateRequest(model=None, arch="llama", size="1B", technique="full", precision="bf16",
                          batch_size=16, seq_len=2048)
    est = estimate(req, gpus=[(0, "L4", 22 * GiB)])
    assert est.gpus[0].verdict == "no"
    # the lossless changes by memory saved; pure bf16 (lossy) after them whatever it saves
    assert est.suggestions[-1].changes == {"train.precision": "bf16-pure"}
    saved = [s.saved_bytes for s in est.suggestions[:-1]]
    assert saved == sorted(saved, reverse=True) and len(saved) >= 4
    for s in est.suggestions:
        assert s.total_bytes == est.total_bytes - s.saved_bytes and s.trade_off and s.speed in ("yes", "no")
    changes = {s.flags.split()[0] for s in est.suggestions}
    assert {"--grad-checkpointing", "--optimizer", "--batch-size"} <= changes
    accum = next(s for s in est.suggestions if s.flags.startswith("--batch-size"))
    b, a = int(accum.flags.split()[1]), int(accum.flags.split()[3])
    assert b * a == 16  # same effective batch
    assert next(s for s in est.suggestions if s.flags == "--grad-checkpointing").trade_off == "gradient checkpointing"


def test_suggestions_carry_structured_changes_that_match_their_totals_and_flags() -> None:
    from dataclasses import replace

    from engine.estimate.suggest import FIELDS, flags_for

    req = EstimateRequest(arch="llama", size="1B", technique="full", precision="bf16", batch_size=16,
                          seq_len=2048)
    gpus = [(0, "L4", 22 * GiB)]
    est = estimate(req, gpus=gpus)
    by_change = {s.change: s for s in est.suggestions}
    assert by_change["gradient checkpointing"].changes == {"train.gradient_checkpointing": True}
    assert by_change["8-bit AdamW"].changes == {"train.optimizer": "adamw8bit"}
    assert by_change["16 GPUs with FSDP (ZeRO-3)"].changes == {"distributed.num_processes": 16,
                                                                 "distributed.strategy": "fsdp"}
    accum = next(s for s in est.suggestions if "train.batch_size" in s.changes).changes
    assert accum["train.batch_size"] * accum["train.grad_accum"] == 16  # same effective batch
    for s in est.suggestions:  # the changes are the change: applied to the request, they give its total
        assert s.changes and s.flags == flags_for(s.changes)
        changed = replace(req, **{FIELDS[k][0]: v for k, v in s.changes.items()})
        assert estimate(changed, gpus=gpus, with_suggestions=False).total_bytes == s.total_bytes, s.change


def test_fits_means_no_suggestions() -> None:
    est = estimate(EstimateRequest(arch="llama", size="tiny", technique="scratch"), gpus=[(0, "H100", 80 * GiB)])
    assert est.gpus[0].verdict == "fits" and est.suggestions == []


def test_a_local_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL_LLAMA))
    assert main(["estimate", "--model", str(tmp_path), "--technique", "lora", "--json", "--gpu-memory", "8GiB"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["params"] == _meta_count(SMALL_LLAMA)
    for key in ("rule_of_thumb_bytes", "breakdown", "peak_bytes", "total_bytes", "gpus", "suggestions", "margins"):
        assert key in data
    assert data["gpus"][0]["verdict"] == "fits" and data["gpus"][0]["free_bytes"] == 8 * GiB
    # LoRA on q and v: rank x (in + out) per layer
    assert data["model"]["trainable_params"] == 2 * 8 * ((64 + 64) + (64 + 32))


def test_human_output_shows_breakdown_verdict_suggestions_and_table_5_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--arch", "llama", "--size", "1B", "--technique", "scratch", "--gpu-memory", "8GiB"]) == 0
    text = capsys.readouterr().out
    for needle in ("Rule of thumb", "optimizer states", "activations", "peak", "CUDA context", "no",
                   "What would make it fit", "Table 5.2", "accumulation", "checkpointing"):
        assert needle in text


@pytest.mark.parametrize("argv, needle", [
    (["--technique", "sorcery"], "unknown technique 'sorcery'"),
    (["--batch-size", "0"], "batch-size must be a positive"),
    (["--seq-len", "-5"], "seq-len must be a positive"),
    (["--precision", "fp8"], "unknown precision"),
    (["--optimizer", "lion"], "unknown optimizer"),
    (["--layers", "0"], "layers must be positive"),
    (["--model", "someone/not-cached-model", "--technique", "full"], "someone/not-cached-model"),
    (["--technique", "lora", "--model", "{empty}"], "no config.json"),
    (["--technique", "scratch", "--dataset", "{missing}"], "not found"),
    (["--technique", "scratch", "--dataset", "{binary}"], "not a text file"),
    (["--technique", "lora", "--lora-targets", "nothing", "--model", "{model}"], "no such Linear"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(SMALL_LLAMA))
    (tmp_path / "data.txt").write_bytes(b"text\x00\x01binary")
    paths = {"{empty}": str(tmp_path / "empty"), "{missing}": str(tmp_path / "nope.txt"),
             "{binary}": str(tmp_path / "data.txt"), "{model}": str(tmp_path / "model")}
    argv = [paths.get(a, a) for a in argv]
    if "--model" not in argv and "--arch" not in argv:
        argv += ["--arch", "llama", "--size", "tiny"]
    code = main(["estimate", "--gpu-memory", "8GiB", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_request_validation_names_the_field() -> None:
    with pytest.raises(UserError) as info:
        EstimateRequest(arch="llama", technique="distill")
    assert info.value.field == "teacher"


def test_a_hub_id_is_read_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # the layout huggingface_hub writes: hub/models--ORG--NAME/{refs/main, snapshots/SHA/config.json}
    import huggingface_hub.constants as hub

    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    sha = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text(json.dumps(SMALL_LLAMA))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["estimate", "--model", "someone/tiny-llama", "--json", "--gpu-memory", "8GiB"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["params"] == _meta_count(SMALL_LLAMA) and "Hub cache" in data["model"]["source"]


@pytest.mark.parametrize("arch, size", [("gpt2", "125M"), ("llama", "1B"), ("llama", "7B")])
def test_scratch_shapes_match_engine_architectures(arch: str, size: str) -> None:
    # model_count writes the config without importing transformers; it must build what
    # engine.models.architectures.build_config builds (the scratch technique's model)
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models.architectures import build_config, shape_for

    config = build_config(arch, shape_for(size), vocab_size=32000, max_seq_len=1024)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    dims = load_dims(arch=arch, size=size, vocab_size=32000, max_seq_len=1024)
    assert dims.params == sum(p.numel() for p in model.parameters())


def test_lora_all_linear_is_every_decoder_linear() -> None:
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    base = dict(arch="llama", size="1B", technique="lora", batch_size=1, seq_len=256)
    every = estimate(EstimateRequest(**base, lora_targets=("all-linear",)), gpus=[])
    listed = estimate(EstimateRequest(**base, lora_targets=names), gpus=[])
    default = estimate(EstimateRequest(**base), gpus=[])
    assert every.model.trainable_params == listed.model.trainable_params > default.model.trainable_params
    assert default.model.trainable_params == 22 * 8 * ((2048 + 2048) + (2048 + 256))  # q_proj, v_proj


def test_eager_attention_grows_with_the_sequence() -> None:
    assert dims_from_config({**SMALL_LLAMA, "attn_implementation": "eager"}).attention == "eager"
    assert dims_from_config(dict(SMALL_LLAMA)).attention == "sdpa"
    base = dict(arch="llama", size="125M", technique="full", precision="bf16-pure", batch_size=1)

    def acts(attention: str, seq: int) -> int:
        return estimate(EstimateRequest(**base, seq_len=seq, attention=attention), gpus=[]).breakdown.activations

    # SDPA's activations are linear in the sequence length; eager's gain an s x s term per head
    assert acts("sdpa", 4096) == pytest.approx(2 * acts("sdpa", 2048), rel=0.01)
    assert acts("eager", 4096) > 2.5 * acts("eager", 2048)
    with pytest.raises(UserError, match="unknown attention"):
        EstimateRequest(**base, attention="flash")


def test_activation_saves_match_autograd() -> None:
    # The table of what each activation keeps for the backward, against autograd's saved tensors
    import torch
    from transformers.activations import ACT2FN

    from engine.estimate.activations import ACTIVATION_SAVES

    for name, (besides, keeps_output) in ACTIVATION_SAVES.items():
        x = torch.randn(8, 64, requires_grad=True) * 1.0  # a non-leaf, like a Linear's output
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = ACT2FN[name](x)
        out = y.untyped_storage()._cdata
        others = sum(n for key, n in saved.items() if key != out)
        assert (others / x.untyped_storage().nbytes(), out in saved) == (besides, keeps_output), name


def test_activation_read_from_config() -> None:
    gpt2 = scratch_config("gpt2", 2, 64, 2, None, 256, 1000, 128)
    assert dims_from_config(gpt2).activation == "gelu_pytorch_tanh"  # what build_config writes
    assert dims_from_config({k: v for k, v in gpt2.items() if k != "activation_function"}).activation == "gelu_new"
    assert dims_from_config(SMALL_LLAMA).activation == "silu"
    assert dims_from_config({**SMALL_LLAMA, "hidden_act": "gelu_pytorch_tanh"}).activation == "gelu_pytorch_tanh"
    # a Python-composed GELU keeps three more tensors of the MLP width per layer than the fused one
    fused = estimate(EstimateRequest(arch="gpt2", size="tiny", technique="scratch", precision="fp32",
                                     batch_size=1, seq_len=64, vocab_size=1000), gpus=[], dims=dims_from_config(gpt2))
    slow = estimate(EstimateRequest(arch="gpt2", size="tiny", technique="scratch", precision="fp32", batch_size=1,
                                    seq_len=64, vocab_size=1000), gpus=[],
                    dims=dims_from_config({**gpt2, "activation_function": "gelu_new"}))
    assert slow.breakdown.activations - fused.breakdown.activations == 3 * 4 * 256 * 64 * 2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_scratch_config_matches_build_config(arch: str) -> None:
    # The estimator's scratch config must be the model the trainer builds (activation included)
    from engine.models.architectures import build_config, shape_for

    shape = shape_for("tiny")
    ours = scratch_config(arch, shape.layers, shape.width, shape.heads, shape.kv_heads, shape.mlp_width(arch),
                          1000, 256)
    built = build_config(arch, shape, vocab_size=1000, max_seq_len=256).to_dict()
    # dropout is the run spec's (engine/techniques/scratch.py sets it on the built config; default 0)
    same = {k: v for k, v in ours.items() if not k.endswith("pdrop")}
    assert {k: built[k] for k in same} == same
    assert dims_from_config(ours).activation == dims_from_config(built).activation
