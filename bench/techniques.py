"""Every technique on its tiny CPU preset: tokens/s through the run engine, and the peak tensor memory of a
training step measured against the estimator's peak for the same settings.

    .venv/bin/python bench/techniques.py                 # all, 3 rounds of 30 steps (~3-4 min on 2 busy cores)
    .venv/bin/python bench/techniques.py --rounds 5 --steps 60
    .venv/bin/python bench/techniques.py --only lora distill --set train.threads=1

Each technique runs its presets/*-tiny.toml (sequence, batch, precision, threads, options as written
there) with what needs the Hub replaced by local stand-ins built here, no network: a 2-layer GPT-2 with
a BPE tokenizer trained on a generated corpus (model.path of full, lora, qlora, prompt-tuning), a 4-layer
GPT-2 with the same tokenizer (distill's teacher), a 1-layer 4-expert Mixtral (moe); data.path is the
generated corpus; evaluation and interval checkpoints are off. scratch runs presets/tiny.toml as it is
written, on the same corpus.

tokens/s: engine.run.trainer.Trainer in this process (as the job runs it), timed between the log at
--log-every steps and the last log (everything the engine does in between counts). Rounds interleave
the techniques so that a busy moment of a shared machine hits all of them; min/median/max are over rounds.

Memory: a separate short run of the same spec whose third optimizer step (the optimizer state exists)
runs inside torch's MemTracker, with the model, the optimizer and any other module the technique holds
(distill's teacher) registered: the peak of live tensor storages, what torch.cuda.max_memory_allocated
reports on a GPU without the allocator's rounding. The estimate is engine.estimate.memory.estimate for an
EstimateRequest built from the same spec; ratio = estimate / measured. QLoRA's 4-bit base runs where
bitsandbytes can (its CPU backend here; paged AdamW falls back to unpaged on the CPU); where its
preflight refuses, the row says why instead.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/tokenize.py would shadow the standard library's `tokenize`: take this folder off the path.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))
sys.path.insert(1, str(_here.parent / "tests" / "support"))  # memory_measure's MemTracker helper
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PRESETS = _here.parent / "presets"
WORDS = ("the cat dog sat on a mat and ran to big red blue house tree with old new fast slow over under "
         "near far little large green yellow river stone road light dark").split()


@dataclass
class Case:
    technique: str
    preset: str
    overrides: list[str]


# ---- local stand-ins for the presets' Hub models ---------------------------------------------------------

def make_corpus(folder: Path, lines: int = 6000) -> Path:
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(lines))
    path = folder / "corpus.txt"
    path.write_text(text + "\n")
    return path


def save(config: Any, tokenizer: Any, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def gpt2(tokenizer: Any, folder: Path, layers: int, width: int) -> Path:
    from transformers import GPT2Config

    eos = tokenizer.eos_token_id
    return save(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=width, n_layer=layers, n_head=2,
                           bos_token_id=eos, eos_token_id=eos), tokenizer, folder)


def mixtral(tokenizer: Any, folder: Path) -> Path:
    from transformers import MixtralConfig

    eos = tokenizer.eos_token_id
    return save(MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                              num_experts_per_tok=2, max_position_embeddings=128, bos_token_id=eos,
                              eos_token_id=eos, tie_word_embeddings=False), tokenizer, folder)


def cases(root: Path) -> list[Case]:
    from engine.data.tokenizer_train import train_tokenizer

    corpus = make_corpus(root)
    tok = train_tokenizer([corpus], "bpe", 512)
    base = gpt2(tok, root / "base", layers=2, width=64)
    teacher = gpt2(tok, root / "teacher", layers=4, width=128)
    moe = mixtral(tok, root / "moe")
    data = [f"data.path='{corpus}'"]
    return [
        Case("scratch", "tiny.toml", data),
        Case("full", "full-tiny.toml", [*data, f"model.path='{base}'"]),
        Case("lora", "lora-tiny.toml", [*data, f"model.path='{base}'", "options.merge=false"]),
        Case("qlora", "qlora-tiny.toml", [*data, f"model.path='{base}'", "options.merge=false"]),
        Case("prompt-tuning", "prompt-tuning-tiny.toml", [*data, f"model.path='{base}'"]),
        Case("distill", "distill-tiny.toml", [*data, f"options.teacher='{teacher}'"]),  # student built from [model]
        Case("moe", "moe-tiny.toml", [*data, f"model.path='{moe}'"]),
    ]


def load_spec(case: Case, steps: int, log_every: int, extra: list[str] | None = None) -> Any:
    from engine import spec

    return spec.load(PRESETS / case.preset, [*case.overrides, f"train.max_steps={steps}", "train.warmup_steps=1",
                                             "eval.every=0", "checkpoint.every=0", f"log.every={log_every}", *(extra or [])])


# ---- measurements ----------------------------------------------------------------------------------------

def tokens_per_s(s: Any, runs: Path, warmup: int) -> float:
    """Train through the engine in this process; tokens/s between the log at `warmup` and the last log."""
    from engine.run import job
    from engine.runfolder import folder as runfolder
    from engine.run.trainer import Trainer

    marks: dict[int, float] = {}

    class Timed(Trainer):
        def _log_metrics(self) -> None:
            marks[self.step] = time.perf_counter()
            super()._log_metrics()

    run = job.create(s, runs)
    code = Timed(run, s).run_job()
    if code != 0:
        errors = [e.get("message") for e in runfolder.read_events(run)[0] if e["type"] == "error"]
        raise SystemExit(f"{s.technique}: the engine run failed ({code}): {errors}")
    last = max(marks)
    return (last - warmup) * s.train.tokens_per_step() / (marks[last] - marks[warmup])


def measured_peak(s: Any, runs: Path, at_step: int = 3) -> int:
    """MemTracker's peak over optimizer step `at_step` of the technique's own step in the Trainer."""
    import torch
    from memory_measure import _skip_frozen_grad_hooks
    from torch.distributed._tools.mem_tracker import MemTracker

    from engine.run import job
    from engine.run.trainer import Trainer

    peak: list[int] = []

    class Tracked(Trainer):
        def _train_step(self) -> bool:
            if self.step + 1 != at_step:
                return super()._train_step()
            tracker = MemTracker()
            _skip_frozen_grad_hooks(tracker)
            modules = [self.prep.model, *(v for v in self.prep.extra.values() if isinstance(v, torch.nn.Module))]
            tracker.track_external(*modules, getattr(self.optimizer, "optimizer", self.optimizer))
            with tracker:
                ok = super()._train_step()
            peak.append(int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]))
            return ok

    Tracked(job.create(s, runs), s).run_job()
    if not peak:
        raise SystemExit(f"{s.technique}: step {at_step} was not reached")
    return peak[0]


def estimated_peak(s: Any) -> int:
    from engine.estimate.memory import EstimateRequest, estimate

    o, t, m = s.options, s.train, s.model
    vocab = None
    if s.technique == "scratch":
        vocab = 257 if s.tokenizer.kind == "byte" else s.tokenizer.vocab_size
    elif not m.path:  # distill's new student: the teacher's vocabulary
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(o["teacher"]).vocab_size
    new_model = s.technique == "scratch" or not m.path
    req = EstimateRequest(
        model=m.path or None, technique=s.technique, teacher=o.get("teacher"),
        arch=m.arch if new_model else None, size=m.size if new_model else None,
        layers=(m.layers or None) if new_model else None, width=(m.width or None) if new_model else None,
        heads=(m.heads or None) if new_model else None, vocab_size=vocab,
        lora_rank=o.get("lora_rank", 16), num_virtual_tokens=o.get("num_virtual_tokens", 8),
        precision=t.precision, optimizer=t.optimizer, batch_size=t.batch_size,
        seq_len=t.seq_len, grad_accum=t.grad_accum, grad_checkpointing=t.gradient_checkpointing)
    return estimate(req, gpus=[], with_suggestions=False).peak_bytes


def load_line() -> str:
    import psutil

    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} cores, {psutil.cpu_percent(interval=0.5):.0f}% busy"


def _mmm(xs: list[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in (min(xs), statistics.median(xs), max(xs)))


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps a timed run (the first log interval warms up)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--only", nargs="+", metavar="TECHNIQUE", help="scratch full lora qlora prompt-tuning distill moe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every preset, e.g. --set train.threads=1 (repeatable)")
    a = p.parse_args(argv)
    if a.steps < 2 * a.log_every:
        p.error("--steps must be at least twice --log-every (a warm-up interval and one timed)")

    import transformers

    from engine.errors import UserError
    from engine.techniques.base import get

    transformers.logging.disable_progress_bar()  # "Loading weights" bars between the table's lines
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("LLM_WIZARD_CACHE", str(root / "cache"))
        runs = root / "runs"
        print(f"building the local models ({load_line()})", flush=True)
        todo, refused = [], {}
        for case in cases(root):
            if a.only and case.technique not in a.only:
                continue
            s = load_spec(case, a.steps, a.log_every, a.overrides)
            check = getattr(get(s.technique), "preflight", None)
            try:
                if check is not None:
                    check(s)
            except UserError as err:
                refused[case.technique] = str(err)
                continue
            todo.append((case, s))

        peaks: dict[str, tuple[int, int]] = {}
        for case, _ in todo:
            s = load_spec(case, 3, 1, a.overrides)
            peaks[case.technique] = (measured_peak(s, runs), estimated_peak(s))
            print(f"  memory {case.technique}: measured {_kib(peaks[case.technique][0])}", flush=True)

        rates: dict[str, list[float]] = {c.technique: [] for c, _ in todo}
        loads = []
        for r in range(a.rounds):
            loads.append(load_line())
            for case, s in todo:
                rates[case.technique].append(tokens_per_s(s, runs, a.log_every))
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), flush=True)

    print(f"\n{'technique':<15}{'tokens/s min / median / max':>32}{'measured peak':>16}{'estimated peak':>16}"
          f"{'est/measured':>14}")
    for case, s in todo:
        measured, est = peaks[case.technique]
        print(f"{case.technique:<15}{_mmm(rates[case.technique]):>32}{_kib(measured):>16}{_kib(est):>16}"
              f"{est / measured:>14.2f}")
    for technique, why in refused.items():
        print(f"{technique:<15}  not run here: {why}")
    print(f"\n{a.rounds} rounds of {a.steps} steps, timed after step {a.log_every}; "
          f"machine: {os.cpu_count()} cores; load per round: " + "; ".join(loads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
