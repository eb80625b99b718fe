"""Training throughput: the run engine against hand-written loops, in one process, in interleaved rounds.

    .venv/bin/python bench/throughput.py                    # the README's run: 3 rounds, ~13 min on 2 busy cores
    .venv/bin/python bench/throughput.py --rounds 5 --steps 40 --log-every 10 --checkpoint-every 20
    .venv/bin/python bench/throughput.py --compile          # also torch.compile on (reference and engine)
    .venv/bin/python bench/throughput.py --only scratch     # scratch, full or lora

Pairs, each measured on the same model size, sequence, batch, thread count and data shape:
  scratch  (a) a minimal GPT-2 in plain PyTorch with fused attention (SDPA), nanoGPT's loop (fused
           AdamW, clip, zero_grad) over a pre-loaded token tensor: the reference; against (b) the scratch
           technique through the whole run engine (engine.run.trainer.Trainer in this process, as the job
           runs it: events, status, command polling, the NaN guard, an interval checkpoint inside the
           measured window; evaluation off, as the reference has none).
  full     a bare loop over transformers' GPT2LMHeadModel loaded from a folder, against the full
           fine-tune technique on that same folder through the engine.
  lora     a bare loop over the same model wrapped by peft (the technique's LoRA settings), against the
           LoRA technique through the engine.
Tokens/s is timed over the steps after a warm-up (the first log interval): the reference around those
steps, the engine from its logging calls (so everything it does between two logs counts, logging and
the interval checkpoint included), both by the wall clock and by this process's CPU time. Rounds
interleave every measurement so a busy moment on a shared machine hits all of them; ratios are taken
within a round. The load average and
the share of the cores busy (psutil) are printed with each round: other people's work on the machine
moves absolute numbers, the ratios much less.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/tokenize.py would shadow the standard library's `tokenize`: take this folder off the path.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the cat dog sat on a mat and ran to big red blue house tree with old new fast slow over under "
         "near far little large green yellow river stone road light dark").split()


# ---- (a) the reference: a minimal GPT-2 with fused attention -------------------------------------------

def minimal_gpt(vocab: int, layers: int, width: int, heads: int, seq_len: int) -> Any:
    """GPT-2's architecture (learned positions, pre-LayerNorm, 4x GELU MLP, tied head) in ~30 lines."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x: Any) -> Any:
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
            return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(seq_len, width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab, bias=False)
            self.head.weight = self.tok.weight

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos(torch.arange(idx.size(1), device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    return GPT()


Rate = tuple[float, float]  # (tokens per wall-clock second, tokens per CPU second of this process)


def hand_loop(model: Any, loss_fn: Callable[[Any, Any], Any], tokens: Any, steps: int, warmup: int,
              batch: int, lr: float, compile_: bool = False) -> Rate:
    """nanoGPT's loop; tokens/s over the steps after `warmup`."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), fused=True)  # the fastest AdamW, as the engine's
    step_model = torch.compile(model) if compile_ else model
    model.train()
    gen = torch.Generator().manual_seed(0)
    seq_len = tokens.size(1) - 1
    start = cpu = 0.0
    for step in range(steps):
        if step == warmup:
            start, cpu = time.perf_counter(), time.process_time()
        rows = torch.randint(0, tokens.size(0), (batch,), generator=gen)
        block = tokens[rows]
        loss = loss_fn(step_model, block)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    float(loss.detach())  # the one sync at the end (a no-op on the CPU, the queue's end on a GPU)
    n = (steps - warmup) * batch * seq_len
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def ce_minimal(model: Any, block: Any) -> Any:
    import torch.nn.functional as F

    logits = model(block[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), block[:, 1:].reshape(-1))


def ce_hf(model: Any, block: Any) -> Any:
    import torch.nn.functional as F

    logits = model(input_ids=block[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), block[:, 1:].reshape(-1))


# ---- (b), (c) the engine -------------------------------------------------------------------------------

def engine_run(spec_dict: dict[str, Any], runs: Path, warmup: int) -> Rate:
    """Train through engine.run.trainer in this process; tokens/s between the logs at `warmup` and at the end
    (the clocks are read as each log starts, so everything between two logs counts)."""
    from engine import spec
    from engine.run import job
    from engine.runfolder import folder as runfolder
    from engine.run.trainer import Trainer

    marks: dict[int, tuple[float, float]] = {}

    class Timed(Trainer):
        def _log_metrics(self) -> None:
            marks[self.step] = (time.perf_counter(), time.process_time())
            super()._log_metrics()

    s = spec.from_dict(spec_dict)
    run = job.create(s, runs)
    code = Timed(run, s).run_job()
    if code != 0:
        errors = [e.get("message") for e in runfolder.read_events(run)[0] if e["type"] == "error"]
        raise SystemExit(f"engine run failed ({code}): {errors}")
    last = max(marks)
    n = (last - warmup) * s.train.tokens_per_step()
    return n / (marks[last][0] - marks[warmup][0]), n / (marks[last][1] - marks[warmup][1])


def base_spec(corpus: Path, a: argparse.Namespace) -> dict[str, Any]:
    # Log every `log_every` steps; one interval checkpoint falls inside the measured window.
    return {"name": "bench", "data": {"path": str(corpus), "val_fraction": 0.01},
            "train": {"seq_len": a.seq, "batch_size": a.batch, "max_steps": a.steps, "warmup_steps": 0,
                      "threads": a.threads, "lr": 3e-4, "schedule": "constant", "compile": False},
            "eval": {"every": 0}, "checkpoint": {"every": a.checkpoint_every, "keep": 2},
            "log": {"every": a.log_every}}


# ---- fixtures ------------------------------------------------------------------------------------------

def make_corpus(folder: Path, megabytes: float) -> Path:
    rng = random.Random(0)
    lines, size = [], 0
    while size < megabytes * 1e6:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "."
        lines.append(line)
        size += len(line) + 1
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_base_model(folder: Path, tokenizer: Any, a: argparse.Namespace) -> Path:
    """GPT2LMHeadModel of the benchmark's shape, saved like a downloaded model (safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models.architectures import build_config, shape_for

    shape = shape_for("10M", layers=a.layers, width=a.width, heads=a.heads)
    config = build_config("gpt2", shape, vocab_size=len(tokenizer), max_seq_len=a.seq)
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def load_tokens(tokenizer: Any, corpus: Path, seq_len: int, limit: int = 4000) -> Any:
    import torch

    ids = tokenizer(corpus.read_text()[: limit * (seq_len + 1) * 2])["input_ids"]
    n = min(limit, len(ids) // (seq_len + 1))
    return torch.tensor(ids[: n * (seq_len + 1)]).view(n, seq_len + 1)


def load_line() -> str:
    import psutil

    one, five, _ = os.getloadavg()
    busy = psutil.cpu_percent(interval=0.5)
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} cores, {busy:.0f}% busy"


# ---- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per measurement (incl. warm-up)")
    p.add_argument("--log-every", type=int, default=4, help="engine log interval; the first interval is warm-up")
    p.add_argument("--checkpoint-every", type=int, default=8, help="engine checkpoints (one inside the window)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile on (reference and engine)")
    p.add_argument("--only", choices=("scratch", "full", "lora"), action="append")
    a = p.parse_args(argv)
    groups = a.only or ["scratch", "full", "lora"]

    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.techniques.lora import DEFAULTS as LORA
    from engine.data.tokenizer_train import train_tokenizer

    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="llmw-bench-"))
    os.environ.setdefault("LLM_WIZARD_CACHE", str(tmp / "cache"))
    corpus = make_corpus(tmp, 2.0)
    tokenizer = train_tokenizer([corpus], "byte", 256)
    base = make_base_model(tmp / "base", tokenizer, a)
    tokens = load_tokens(tokenizer, corpus, a.seq)
    vocab = len(tokenizer)
    warmup = a.log_every
    print(f"torch {torch.__version__}, {a.threads} threads, {a.layers} layers, width {a.width}, heads {a.heads}, "
          f"seq {a.seq}, batch {a.batch}, vocab {vocab}; {a.steps} steps per measurement, the first {warmup} "
          f"warm-up; engine logs every {a.log_every}, checkpoints every {a.checkpoint_every}", flush=True)

    def scratch_ref(compile_: bool = False) -> Rate:
        torch.manual_seed(0)
        model = minimal_gpt(vocab, a.layers, a.width, a.heads, a.seq)
        return hand_loop(model, ce_minimal, tokens, a.steps, warmup, a.batch, 3e-4, compile_)

    def scratch_engine(compile_: bool = False) -> Rate:
        d = base_spec(corpus, a)
        d["train"]["compile"] = compile_
        d.update(technique="scratch", tokenizer={"kind": "byte"},
                 model={"arch": "gpt2", "size": "10M", "layers": a.layers, "width": a.width, "heads": a.heads})
        return engine_run(d, tmp / "runs", warmup)

    def bare_hf(lora: bool) -> Rate:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model.config.use_cache = False
        if lora:
            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(
                task_type=TaskType.CAUSAL_LM, r=LORA["lora_rank"], lora_alpha=2 * LORA["lora_rank"],
                lora_dropout=LORA["lora_dropout"], target_modules=["c_attn"], fan_in_fan_out=True))
        return hand_loop(model, ce_hf, tokens, a.steps, warmup, a.batch, 2e-4)

    def finetune_engine(technique: str) -> Rate:
        d = base_spec(corpus, a)
        d.update(technique=technique, model={"path": str(base)})
        return engine_run(d, tmp / "runs", warmup)

    pairs: list[tuple[str, str, Callable[[], Rate], str, Callable[[], Rate]]] = []
    if "scratch" in groups:
        pairs.append(("scratch", "minimal GPT (SDPA), hand loop", scratch_ref, "scratch via engine", scratch_engine))
        if a.compile:
            pairs.append(("scratch+compile", "minimal GPT, hand loop, compiled", lambda: scratch_ref(True),
                          "scratch via engine, train.compile", lambda: scratch_engine(True)))
    if "full" in groups:
        pairs.append(("full", "GPT2LMHeadModel, bare loop", lambda: bare_hf(False), "full via engine",
                      lambda: finetune_engine("full")))
    if "lora" in groups:
        pairs.append(("lora", "GPT2LMHeadModel + peft LoRA, bare loop", lambda: bare_hf(True), "lora via engine",
                      lambda: finetune_engine("lora")))

    results: dict[str, list[tuple[Rate, Rate]]] = {name: [] for name, *_ in pairs}
    loads: list[str] = []
    for r in range(a.rounds):
        loads.append(load_line())
        print(f"round {r + 1}/{a.rounds}: {loads[-1]}", flush=True)
        for i, (name, ref_label, ref, eng_label, eng) in enumerate(pairs):
            order = [(ref_label, ref), (eng_label, eng)]
            if (r + i) % 2:
                order.reverse()  # alternate which of the pair runs first
            got = {}
            for label, fn in order:
                got[label] = fn()
                print(f"  {label:<40} {got[label][0]:>7.0f} tokens/s wall {got[label][1]:>7.0f} per CPU s",
                      flush=True)
            results[name].append((got[ref_label], got[eng_label]))
            (rw, rc), (ew, ec) = got[ref_label], got[eng_label]
            print(f"  {name}: engine/reference {ew / rw:.3f} wall, {ec / rc:.3f} CPU time", flush=True)
    loads.append(load_line())
    print(f"after: {loads[-1]}")

    print(f"\nSummary over {a.rounds} interleaved rounds, min / median / max (wall: tokens per second; CPU: "
          "tokens per CPU-second of this process, which other people's work on a shared machine moves less):")
    print(f"{'pair':<16}{'reference wall':>22}{'engine wall':>22}{'ratio wall':>22}{'ratio CPU time':>22}")
    for name, *_ in pairs:
        refs, engs = [x[0] for x, _ in results[name]], [y[0] for _, y in results[name]]
        wall = [y[0] / x[0] for x, y in results[name]]
        cpu = [y[1] / x[1] for x, y in results[name]]
        print(f"{name:<16}{_mmm(refs, '.0f'):>22}{_mmm(engs, '.0f'):>22}{_mmm(wall, '.3f'):>22}{_mmm(cpu, '.3f'):>22}")
    print(f"machine: {os.cpu_count()} cores ({_cpu_name()}); load per round: " + "; ".join(loads))
    return 0


def _mmm(xs: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in (min(xs), statistics.median(xs), max(xs)))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
