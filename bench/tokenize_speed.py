"""Data preparation speed: build_token_file against one `tokenizer(text)` call over the same text.

    .venv/bin/python bench/tokenize_speed.py            # ~100 MB generated from the stdlib sources
    .venv/bin/python bench/tokenize_speed.py --mb 20 --rounds 3   # smaller, interleaved rounds
    .venv/bin/python bench/tokenize_speed.py --path DIR --tokenizer TOKENIZER_DIR

The corpus (unless --path) is the Python standard library's source, repeated to --mb megabytes
and cut into files of about 1 MB. The tokenizer (unless --tokenizer) is a byte-level BPE of
--vocab tokens trained by engine.data.tokenizer_train on the first few MB. Both measurements run in this
process on the same files; the token file goes to a fresh temporary cache each round, so nothing
is reused between the runs; rounds alternate the two so that a busy moment hits both. At 100 MB on 2 cores the whole run takes a few minutes and the baseline needs a few GB of
memory (one Encoding for the whole text).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run from a checkout
# Rust-side parallelism on unless the caller chose otherwise; set before tokenizers is imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def generate_corpus(folder: Path, megabytes: float, file_mb: float = 1.0) -> list[Path]:
    from engine.data.corpus import read_text, stdlib_corpus

    sources = [read_text(p) for p in stdlib_corpus()]
    target, per_file = int(megabytes * 1e6), int(file_mb * 1e6)
    files: list[Path] = []
    written = 0
    buffer: list[str] = []
    size = 0
    passes = 0
    while written + size < target:
        for text in sources:
            buffer.append(text)
            size += len(text.encode("utf-8"))
            if size >= per_file or written + size >= target:
                path = folder / f"part-{len(files):05d}.txt"
                path.write_text("".join(buffer), encoding="utf-8")
                files.append(path)
                written += size
                buffer, size = [], 0
                if written >= target:
                    break
        passes += 1
    return files


# Peak memory of one tokenizer(text) call per byte of text, measured here (2 GB for 10 MB): the
# Encoding keeps a string, offsets and masks per token and alignments per byte.
BASELINE_BYTES_PER_BYTE = 200


def baseline_bytes(total: int, asked_mb: float | None) -> int:
    """How much of the text the baseline call gets: all, unless asked or memory is short."""
    if asked_mb is not None:
        return min(total, int(asked_mb * 1e6))
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return total
    # A third of the free memory at most: the machine may be shared.
    return min(total, int(available / 3 / BASELINE_BYTES_PER_BYTE))


def progress_bar(done: int, total: int) -> None:
    """The progress callback drawn as a bar on a terminal (nothing when stderr is a file)."""
    if sys.stderr.isatty():
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r  tokenizing [{'#' * filled}{'.' * (30 - filled)}] {done / 1e6:6.1f} / {total / 1e6:.1f} MB{end}")
        sys.stderr.flush()


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated corpus in MB (default 100)")
    parser.add_argument("--path", help="a text file or folder to use instead of the generated corpus")
    parser.add_argument("--tokenizer", help="a local tokenizer folder (AutoTokenizer) instead of training a BPE")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary when training one (default 8192)")
    parser.add_argument(
        "--baseline-mb",
        type=float,
        help="measure the baseline on the first N MB only (default: all of it, unless memory is short)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of both (default 1)")
    args = parser.parse_args(argv)

    from engine.data.corpus import read_text, text_files

    work = Path(tempfile.mkdtemp(prefix="llmw-bench-tok-"))
    os.environ["LLM_WIZARD_CACHE"] = str(work / "cache")
    started = time.monotonic()
    if args.path:
        files = text_files(args.path)
    else:
        (work / "corpus").mkdir()
        files = generate_corpus(work / "corpus", args.mb)
    total = sum(f.stat().st_size for f in files)
    print(f"corpus: {len(files)} files, {total / 1e6:.1f} MB ({'--path ' + args.path if args.path else 'generated'})")

    from transformers import AutoTokenizer

    from engine.data.token_cache import build_token_file
    from engine.data.tokenizer_train import train_tokenizer

    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        print(f"tokenizer: {args.tokenizer} ({len(tok)} tokens)")
    else:
        head, size = [], 0
        for f in files:
            head.append(f)
            size += f.stat().st_size
            if size >= 5e6:
                break
        t0 = time.monotonic()
        tok = train_tokenizer(head, "bpe", args.vocab)
        print(f"tokenizer: byte-level BPE, {len(tok)} tokens, trained on {size / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s")
    print(f"cores: {os.cpu_count()}, TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')}")

    base_bytes = baseline_bytes(total, args.baseline_mb)
    if base_bytes < total:
        why = (
            "as asked"
            if args.baseline_mb is not None
            else f"one call over all of it would need about {BASELINE_BYTES_PER_BYTE * total / 1e9:.0f} GB of memory"
        )
        print(f"note: baseline measured on the first {base_bytes / 1e6:.1f} MB ({why})")
    mb, base_mb = total / 1e6, base_bytes / 1e6
    text: str | None = None

    import engine.data.corpus

    ours, base, busy, ratios, ours_eff, base_eff = [], [], [], [], [], []
    for r in range(args.rounds):  # interleaved, so a busy moment on a shared machine hits both
        # Ours: reading, checking, hashing, tokenizing and writing the token file, all counted.
        engine.data.corpus._content_hashes.clear()
        t0, cpu0 = time.monotonic(), time.process_time()
        token_file = build_token_file(files, tok, cache_dir=work / f"tokens-{r}", progress=progress_bar)
        ours_s, ours_cpu = time.monotonic() - t0, time.process_time() - cpu0
        if r == 0:
            ours_rss = peak_rss_mb()
            engine.data.corpus._content_hashes.clear()  # as in a new process: the corpus is hashed again
            t0 = time.monotonic()
            build_token_file(files, tok, cache_dir=work / "tokens-0")
            hit_s = time.monotonic() - t0
        if text is None:  # the baseline's input, in memory (reading it is not counted against the call)
            text = "".join(read_text(f) for f in files)
            if base_bytes < total:
                text = text.encode("utf-8")[:base_bytes].decode("utf-8", errors="ignore")
        t0, cpu0 = time.monotonic(), time.process_time()
        encoded = tok(text)
        base_s, base_cpu = time.monotonic() - t0, time.process_time() - cpu0
        base_tokens = len(encoded["input_ids"])
        del encoded
        ours.append(mb / ours_s)
        base.append(base_mb / base_s)
        busy.append(ours_cpu / ours_s)
        ratios.append(ours[-1] / base[-1])
        ours_eff.append(mb / ours_cpu)
        base_eff.append(base_mb / base_cpu)
        print(f"round {r + 1}: baseline {base[-1]:6.2f} MB/s ({base_s:.1f} s, {base_cpu / base_s:.1f} cores busy), "
              f"build_token_file {ours[-1]:6.2f} MB/s ({ours_s:.1f} s, {busy[-1]:.1f} cores busy), "
              f"ratio {ratios[-1]:.2f}x")

    def spread(values: list[float]) -> str:
        return f"min {min(values):.2f} / median {statistics.median(values):.2f} / max {max(values):.2f}"

    print(f"baseline tokenizer(text) MB/s: {spread(base)}  ({base_tokens:,} tokens over {base_mb:.1f} MB)")
    print(f"build_token_file MB/s:         {spread(ours)}  ({token_file.n_tokens:,} tokens over {mb:.1f} MB, "
          f"incl. {len(files)} eos)")
    print(f"ratio (ours / baseline):       {spread(ratios)}")
    print(f"cores busy during build_token_file: {spread(busy)} of {os.cpu_count()}")
    # Per CPU-second the comparison does not depend on what else the machine is running.
    print(f"MB per CPU-second: baseline {spread(base_eff)}; build_token_file {spread(ours_eff)}")
    print(f"second call (cache hit, corpus hashed again): {hit_s:.2f} s")
    print(f"peak memory (RSS): {ours_rss:.0f} MB after build_token_file, {peak_rss_mb():.0f} MB after the baseline")
    print(f"total run time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
