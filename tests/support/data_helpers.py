"""Small generated corpora for the data tests: deterministic, a few KB, no network."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the model learns from text and the loss falls while the learning rate warms up then decays "
    "tokens blocks batches epochs checkpoints resume pause rescue café naïve 数据 训练"
).split()


def make_corpus(root: Path, n_files: int = 4, words_per_file: int = 400, seed: int = 0) -> list[Path]:
    """`n_files` text files of pseudo-random sentences (some non-ASCII) under `root`, sorted."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n_files):
        lines = []
        for _ in range(words_per_file // 10):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(10)) + ".")
        path = root / f"doc{i:02d}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files
