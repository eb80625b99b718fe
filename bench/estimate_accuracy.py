"""Estimated against measured peak memory of one training step: case, estimate, measured, ratio, time.

    .venv/bin/python bench/estimate_accuracy.py            # the test cases, then realistic shapes
    .venv/bin/python bench/estimate_accuracy.py --small    # the small cases only (~2 min)
    .venv/bin/python bench/estimate_accuracy.py --big      # also a 7B Llama LoRA step (~2 min more)

Small GPT-2/Llama cases run with real tensors on the CPU; the other families' cases (tests/support/arch_cases.py)
and realistic shapes (GPT-2 125M, TinyLlama 1.1B, Llama 2 7B, and published configs of the other families)
run under FakeTensorMode, which measures without allocating. Both use tests/support/memory_measure.py, the
module the accuracy tests use. The estimate's own time is printed per call: the first estimate of an
architecture (it measures a reduced copy) and a later one (from the cache); the cache is a fresh folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The project and tests/support/ (the measuring code the accuracy tests share) when run from a checkout.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests" / "support")]

os.environ["LLM_WIZARD_CACHE"] = tempfile.mkdtemp(prefix="llmw-bench-cache-")  # first estimates measure
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.estimate.memory import EstimateRequest, estimate  # noqa: E402
from memory_measure import CASES, case_request, fake_case, measurable_dims, measure, _config_folder  # noqa: E402

# name -> request; measured under FakeTensorMode
REALISTIC: dict[str, dict] = {
    "gpt2 125M full fp32 adamw b8 s1024": dict(arch="gpt2", size="125M", vocab_size=50257, technique="full",
                                              precision="fp32", batch_size=8, seq_len=1024),
    "llama 1.1B scratch bf16 adamw b1 s512": dict(arch="llama", size="1B", technique="scratch", precision="bf16-pure",
                                                 batch_size=1, seq_len=512),
    "llama 1.1B full bf16 b4 s2048": dict(arch="llama", size="1B", technique="full", precision="bf16-pure",
                                         batch_size=4, seq_len=2048),
    "llama 1.1B full bf16 ckpt b16 s2048": dict(arch="llama", size="1B", technique="full", precision="bf16-pure",
                                               grad_checkpointing=True, batch_size=16, seq_len=2048),
    "llama 1.1B lora bf16 b4 s1024": dict(arch="llama", size="1B", technique="lora", precision="bf16-pure",
                                         batch_size=4, seq_len=1024),
}
# Published configs of the other families (their config.json numbers), measured under FakeTensorMode
PUBLISHED: dict[str, tuple[dict, dict]] = {
    "pythia-1b": (dict(model_type="gpt_neox", vocab_size=50304, hidden_size=2048, num_hidden_layers=16,
                       num_attention_heads=8, intermediate_size=8192, rotary_pct=0.25, use_parallel_residual=True,
                       max_position_embeddings=2048, tie_word_embeddings=False),
                  dict(technique="full", precision="bf16", batch_size=4, seq_len=1024)),
    "bloom-560m": (dict(model_type="bloom", vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
                   dict(technique="full", precision="fp32", batch_size=2, seq_len=1024)),
    "gemma-2-2b": (dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                        num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                        query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh"),
                   dict(technique="lora", precision="bf16-pure", batch_size=2, seq_len=2048)),
    "mistral-7b": (dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, sliding_window=4096,
                        max_position_embeddings=32768),
                   dict(technique="lora", precision="bf16-pure", batch_size=1, seq_len=4096,
                        grad_checkpointing=True)),
    "qwen1.5-moe-a2.7b": (dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                               moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_experts=60,
                               num_experts_per_tok=4, num_hidden_layers=24, num_attention_heads=16,
                               num_key_value_heads=16),
                          dict(technique="lora", precision="bf16-pure", batch_size=2, seq_len=1024,
                               lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))),
    "opt-1.3b": (dict(model_type="opt", vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                      num_attention_heads=32, word_embed_proj_dim=2048, max_position_embeddings=2048),
                 dict(technique="full", precision="bf16-pure", optimizer="sgd", batch_size=8, seq_len=512)),
    "phi-1.5": (dict(model_type="phi", vocab_size=51200, hidden_size=2048, intermediate_size=8192,
                     num_hidden_layers=24, num_attention_heads=32, partial_rotary_factor=0.5, hidden_act="gelu_new"),
                dict(technique="lora", precision="bf16", batch_size=4, seq_len=2048)),
    "falcon-rw-1b": (dict(model_type="falcon", vocab_size=50304, hidden_size=2048, num_hidden_layers=24,
                          num_attention_heads=32, alibi=True, multi_query=False, parallel_attn=False, bias=True,
                          new_decoder_architecture=False),
                     dict(technique="full", precision="bf16", batch_size=2, seq_len=1024, grad_checkpointing=True)),
    "stablelm-2-1.6b": (dict(model_type="stablelm", vocab_size=100352, hidden_size=2048, intermediate_size=5632,
                             num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                             use_qkv_bias=True),
                        dict(technique="full", precision="bf16-pure", batch_size=2, seq_len=2048)),
}
BIG = {
    "llama 7B lora bf16 b1 s2048": dict(arch="llama", size="7B", technique="lora", precision="bf16-pure",
                                       batch_size=1, seq_len=2048),
}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _request(name: str, kw: dict) -> EstimateRequest:
    if name in CASES:
        return case_request(name)
    if name in PUBLISHED:
        config, options = PUBLISHED[name]
        return EstimateRequest(model=_config_folder(name, config), **options)
    return EstimateRequest(**kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="only the small cases (the tests run a subset)")
    ap.add_argument("--big", action="store_true", help="also a 7B Llama (about 2 minutes on 2 cores)")
    ap.add_argument("--only", default="", help="only the cases whose name contains this text")
    args = ap.parse_args(argv)
    runs = [(name, kw, fake_case(name)) for name, kw in CASES.items()]
    if not args.small:
        runs += [(name, kw, True) for name, kw in REALISTIC.items()]
        runs += [(f"{name} " + " ".join(f"{k}={v}" for k, v in opts.items() if k != "lora_targets"), {}, True)
                 for name, (_, opts) in PUBLISHED.items()]
    if args.big:
        runs += [(name, kw, True) for name, kw in BIG.items()]
    runs = [r for r in runs if args.only in r[0]]
    print(f"{'case':58} {'estimate':>12} {'measured':>12} {'ratio':>6} {'peak phase':>14} {'activations':>11} "
          f"{'est s':>6} {'again s':>7} {'meas s':>6}")
    errors, firsts, laters = [], [], []
    for label, kw, fake in runs:
        name = label.split(" ", 1)[0] if label.split(" ", 1)[0] in PUBLISHED else label
        req = _request(name, kw)
        dims = measurable_dims(req)
        start = time.perf_counter()
        est = estimate(req, gpus=[], dims=dims)
        first = time.perf_counter() - start
        start = time.perf_counter()
        estimate(req, gpus=[], dims=dims)
        later = time.perf_counter() - start
        start = time.perf_counter()
        measured = measure(req, fake=fake, dims=dims)
        took = time.perf_counter() - start
        ratio = est.peak_bytes / measured.peak_bytes
        errors.append(ratio - 1)
        if dims.measurable:
            firsts.append(first)
            laters.append(later)
        source = est.breakdown.activations_source.split(" ")[0]
        print(f"{label + (' (fake)' if fake else ''):58} {_mib(est.peak_bytes):>12} {_mib(measured.peak_bytes):>12} "
              f"{ratio:6.3f} {est.peak_phase:>14} {source:>11} {first:6.2f} {later:7.3f} {took:6.1f}", flush=True)
    worst = max(errors, key=abs)
    print(f"{len(errors)} cases: median |error| {statistics.median(abs(e) for e in errors):.1%}, "
          f"worst {worst:+.1%}, within 10%: {sum(abs(e) <= 0.10 for e in errors)}/{len(errors)}")
    if firsts:
        print(f"estimate time, measured architectures: first of an architecture+variant up to {max(firsts):.2f} s "
              f"(median {statistics.median(firsts):.2f} s), later calls up to {max(laters):.3f} s")
    return 0 if abs(worst) <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
