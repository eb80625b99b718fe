"""Estimated against measured peak memory of one training step: case, estimate, measured, ratio.

    .venv/bin/python bench/estimate_accuracy.py            # the test cases, then realistic shapes
    .venv/bin/python bench/estimate_accuracy.py --small    # the test cases only (~1 min)
    .venv/bin/python bench/estimate_accuracy.py --big      # also a 7B Llama LoRA step (~2 min more)

Small cases run with real tensors on the CPU; realistic shapes (GPT-2 125M, TinyLlama 1.1B, Llama
2 7B) run under FakeTensorMode, which measures without allocating. Both use tests/support/memory_measure.py,
the module the accuracy tests use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The project and tests/support/ (the measuring code the accuracy tests share) when run from a checkout.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests" / "support")]

from engine.estimate.memory import EstimateRequest, estimate  # noqa: E402
from memory_measure import CASES, case_request, measurable_dims, measure  # noqa: E402

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
BIG = {
    "llama 7B lora bf16 b1 s2048": dict(arch="llama", size="7B", technique="lora", precision="bf16-pure",
                                       batch_size=1, seq_len=2048),
}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="only the small cases the tests run")
    ap.add_argument("--big", action="store_true", help="also a 7B Llama (about 2 minutes on 2 cores)")
    args = ap.parse_args(argv)
    runs = [(name, kw, False) for name, kw in CASES.items()]
    if not args.small:
        runs += [(name, kw, True) for name, kw in REALISTIC.items()]
    if args.big:
        runs += [(name, kw, True) for name, kw in BIG.items()]
    print(f"{'case':42} {'estimate':>14} {'measured':>14} {'ratio':>6} {'peak phase':>15} {'s':>5}")
    worst = 0.0
    for name, kw, fake in runs:
        req = case_request(name) if name in CASES else EstimateRequest(**kw)
        dims = measurable_dims(req)
        start = time.perf_counter()
        measured = measure(req, fake=fake, dims=dims)
        took = time.perf_counter() - start
        est = estimate(req, gpus=[], dims=dims)
        ratio = est.peak_bytes / measured.peak_bytes
        worst = max(worst, abs(ratio - 1))
        label = name + (" (fake)" if fake else "")
        print(f"{label:42} {_mib(est.peak_bytes):>14} {_mib(measured.peak_bytes):>14} {ratio:6.3f} "
              f"{est.peak_phase:>15} {took:5.1f}", flush=True)
    print(f"largest deviation: {worst:.1%}")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
