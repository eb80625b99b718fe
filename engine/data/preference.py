"""Preference pairs as the preference techniques (dpo, orpo) train on them: the prompt answered two ways.

Each pair (engine/data/formats.py `Pair`) is rendered through the same Renderer as supervised chat data:
prompt + chosen and prompt + rejected, each exactly as `apply_chat_template` gives it, the loss mask on the
answer's tokens only (its end-of-turn token included, as for any reply). The two sequences are cached as
two consecutive examples of an example file (engine/data/example_file.py: same files, same cache-key rules;
the key differs from supervised data's by the source's `pairs` flag and the recipe), so pair k is examples
2k (chosen) and 2k + 1 (rejected).

Long pairs: a sequence longer than seq_len + 1 tokens loses tokens from the start of its prompt (both
sequences of the pair lose the same number, so they keep the same context) while at least one prompt token
is left before the first answer token; else the pair is dropped. Both are counted.

PairBlocks serves batches of pairs with TokenBlocks' data-position contract: (epoch, position) over the
training pairs, the order of an epoch a permutation drawn from (seed, epoch), so a checkpoint's position
resumes exactly. Validation is the last `val_fraction` of the pairs (at least one). A batch is a LongTensor
(B, 2, 3, L): [:, 0] the chosen sequence, [:, 1] the rejected one; channel 0 the ids (right-padded),
channel 1 the mask (1: an answer token that carries the loss, 2: a prompt token, 0: padding), channel 2
the pair's index in the file (for reference log-probabilities computed once); L is the longest sequence of
the batch. Right padding needs no attention mask for a causal model: a real token never sees what follows.

    blocks = pair_blocks(source, tokenizer, template, seq_len)   # source.pairs = True
    ids, trained, real, pair = split_pairs(batch)                 # (2B, L) chosen rows first, as TRL's
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data.chat_templates import ChatTemplate
from engine.data.example_file import TRAINED, ExampleFile
from engine.data.formats import Pair
from engine.data.pack import PackedBlocks
from engine.data.render import Encoded, Renderer, RenderError
from engine.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from engine.data.sources import DataSource

ANSWER, PROMPT = 1, 2  # the mask channel's values (0: padding)


class PairRenderer:
    """A Renderer for build_example_file: each pair becomes two examples, chosen then rejected."""

    def __init__(self, tokenizer: Any, template: ChatTemplate) -> None:
        self.renderer = Renderer(tokenizer, template, "assistant")  # the answers' turns only, whatever data.train_on
        self.tokenizer, self.template = tokenizer, template
        self.train_on = "pairs"  # part of the cache key: never the same file as supervised examples

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        for i, item in enumerate(items):
            if not isinstance(item, Pair):
                raise RenderError("not a preference pair", i)
        try:
            return self.renderer.encode([c for p in items for c in (p.chosen, p.rejected)])
        except RenderError as exc:
            raise RenderError(str(exc), exc.index // 2) from None


@dataclass(frozen=True)
class PairLayout:
    """The pairs kept, in file order: their index in the file and each sequence's token range after the cut."""
    pair: np.ndarray  # (n,) int64
    start: np.ndarray  # (n, 2): chosen, rejected
    length: np.ndarray  # (n, 2)
    tokens: int
    trained: int
    truncated: int
    dropped: int

    @property
    def pairs(self) -> int:
        return len(self.pair)


def pair_layout(example_file: ExampleFile, seq_len: int) -> PairLayout:
    """Which pairs fit in seq_len + 1 tokens a sequence, cutting the prompt's start where that is enough."""
    import numpy as np

    index = example_file.index()
    if len(index) % 2:
        raise ValueError("a pair file holds an even number of examples")
    index = index.reshape(-1, 2, 4)
    start, length, first, n_trained = index[..., 0], index[..., 1], index[..., 2], index[..., 3]
    cut = np.maximum(length - (seq_len + 1), 0).max(axis=1)
    nothing = (first < 0).any(axis=1)
    keep = ~nothing & (cut < first.min(axis=1))  # one prompt token at least stays before the answer
    kept = np.flatnonzero(keep)
    start = start[kept] + cut[kept, None]
    length = length[kept] - cut[kept, None]
    return PairLayout(kept.astype(np.int64), start, length, int(length.sum()), int(n_trained[kept].sum()),
                      int((cut[kept] > 0).sum()), int(len(keep) - len(kept)))


class PairBlocks(PackedBlocks):
    """Batches of pairs over a pair file (see the module docstring). A 'block' is a pair here: n_train_blocks
    is the number of training pairs, so the trainer's data position and epochs count pairs."""

    def __init__(self, example_file: ExampleFile, seq_len: int, val_fraction: float = 0.05, seed: int = 0,
                 pad_id: int = 0) -> None:
        import numpy as np

        if seq_len < 1:
            raise UserError(f"seq_len must be at least 1, got {seq_len}", field="seq_len")
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}", field="val_fraction")
        layout = pair_layout(example_file, seq_len)
        n = layout.pairs
        if n == 0:
            raise UserError(f"no preference pair fits in train.seq_len = {seq_len} ({layout.dropped} dropped: their "
                            "answers need more tokens, or an answer is empty); raise train.seq_len",
                            field="train.seq_len")
        n_val = max(1, math.ceil(n * val_fraction)) if val_fraction > 0 else 0
        if n - n_val < 1:
            raise UserError(f"{n} preference pair(s): too few for a training and a validation pair; add pairs or set "
                            "data.val_fraction = 0", field="data.val_fraction")
        self.token_file = example_file.token_file
        self.example_file = example_file
        self.layout = layout  # type: ignore[assignment]  # a PairLayout, not pack.Layout
        self.seq_len, self.seed, self.pad_id = seq_len, seed, pad_id
        self.n_tokens = layout.tokens
        self.n_train_blocks, self.n_val_blocks = n - n_val, n_val
        self.train_tokens = int(layout.length[:n - n_val].sum())
        self.val_tokens = layout.tokens - self.train_tokens
        self.trained_tokens = layout.trained
        tf = self.token_file
        self._tokens = np.memmap(tf.path, dtype=tf.dtype, mode="r", shape=(tf.n_tokens,))
        self._mask = np.memmap(example_file.mask_path, dtype=np.uint8, mode="r", shape=(tf.n_tokens,))
        self._perms: dict[int, np.ndarray] = {}
        self.report: Any = None

    def train_batch(self, epoch: int, position: int, batch_size: int) -> torch.Tensor:
        """(batch_size, 2, 3, L) of the pairs at (epoch, position) onwards (TokenBlocks' contract)."""
        import numpy as np

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        if epoch < 0 or position < 0:
            raise ValueError(f"data position must not be negative: epoch {epoch}, position {position}")
        samples = epoch * self.n_train_blocks + position + np.arange(batch_size)
        epochs, rows = np.divmod(samples, self.n_train_blocks)
        picked = np.empty(batch_size, dtype=np.int64)
        for e in range(int(epochs[0]), int(epochs[-1]) + 1):
            here = epochs == e
            picked[here] = self.permutation(e)[rows[here]]
        return self.pairs_at(picked)

    def val_batches(self, batch_size: int) -> Any:
        import numpy as np

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        for first in range(0, self.n_val_blocks, batch_size):
            count = min(batch_size, self.n_val_blocks - first)
            yield self.pairs_at(self.n_train_blocks + first + np.arange(count))

    def all_batches(self, batch_size: int) -> Any:
        """Every kept pair in file order (training then validation), for reference log-probabilities."""
        import numpy as np

        total = self.n_train_blocks + self.n_val_blocks
        for first in range(0, total, batch_size):
            yield self.pairs_at(first + np.arange(min(batch_size, total - first)))

    def pairs_at(self, rows: np.ndarray) -> torch.Tensor:
        """The pairs at these rows of the layout, as one (len(rows), 2, 3, L) batch."""
        import numpy as np
        import torch

        lay = self.layout
        starts, lengths = lay.start[rows], lay.length[rows]
        width = int(lengths.max())
        out = np.zeros((len(rows), 2, 3, width), np.int64)
        out[:, :, 0] = self.pad_id
        out[:, :, 2] = lay.pair[rows][:, None, None]
        for b in range(len(rows)):
            for side in (0, 1):
                s, n = int(starts[b, side]), int(lengths[b, side])
                out[b, side, 0, :n] = self._tokens[s:s + n]
                out[b, side, 1, :n] = np.where(self._mask[s:s + n] & TRAINED, ANSWER, PROMPT)
        return torch.from_numpy(out)

    def describe(self) -> dict[str, int]:
        return {"tokens": self.n_tokens, "train_tokens": self.train_tokens, "val_tokens": self.val_tokens,
                "train_blocks": self.n_train_blocks, "val_blocks": self.n_val_blocks, "seq_len": self.seq_len,
                "trained_tokens": self.trained_tokens, "pairs": self.layout.pairs,
                "truncated": self.layout.truncated, "dropped": self.layout.dropped}


def split_pairs(batch: Any) -> tuple[Any, Any, Any, Any]:
    """(ids, answer mask, real-token mask, pair index) of a (B, 2, 3, L) batch: (2B, L) rows, the B chosen
    sequences first, then the B rejected ones (TRL's concatenated order), and (B,) pair indices."""
    rows = batch.transpose(0, 1).reshape(-1, batch.size(2), batch.size(3))
    return rows[:, 0], rows[:, 1] == ANSWER, rows[:, 1] != 0, batch[:, 0, 2, 0]


def pair_blocks(source: DataSource, tokenizer: Any, template: ChatTemplate, seq_len: int, *,
                val_fraction: float = 0.05, seed: int = 0, cache_dir: Path | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> PairBlocks:
    """Render and cache the source's pairs once (or reuse the cached file), then lay them out for training."""
    from engine.data.example_file import build_example_file

    example_file = build_example_file(source, PairRenderer(tokenizer, template),  # type: ignore[arg-type]
                                      cache_dir=cache_dir, progress=progress, should_stop=should_stop)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PairBlocks(example_file, seq_len, val_fraction, seed, pad_id=pad)
