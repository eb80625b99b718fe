"""Examples packed into the token blocks the trainer eats, each example whole and attending only to itself.

Plain text (continued pretraining) is a stream cut into blocks (engine/data/token_cache.py TokenBlocks),
documents back to back with an eos between them, as in the scratch technique. Examples with a loss
mask (conversations, instruction pairs, the label layout) are packed by `pack_layout`:
- whole examples only: a block holds consecutive examples that fit in seq_len + 1 tokens, the rest is
  padding (no loss); an example longer than a block is truncated to it when its first trained token
  is inside, else dropped (its reply would train without its prompt); both are counted;
- position ids restart at 0 for every example, so transformers' packed-sequence attention (built from
  the position ids when no attention mask is given: sdpa, eager and flash attention) keeps examples
  from attending to each other; `data.packing = false` gives every example a block of its own.
PackedBlocks' batches are (B, 3, T+1): ids, loss mask, position ids. `lm_loss(model, batch)` takes
(B, T+1) ids, (B, 2, T+1) ids + mask, or the packed (B, 3, T+1).

    # in a technique's setup(ctx) (engine/data/prepare.py)
    prepared = source_blocks(ctx, tokenizer, model)    # the template applied, new tokens' rows added
    return Prepared(model=model, tokenizer=tokenizer, data=prepared.blocks,
                    data_fingerprint=prepared.fingerprint, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.data.example_file import START, TRAINED, ExampleFile
from engine.data.token_cache import TokenBlocks
from engine.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch



@dataclass(frozen=True)
class Layout:
    """Blocks as contiguous token ranges of the example file: block i is tokens[start[i]:start[i] + length[i]]."""
    start: np.ndarray
    length: np.ndarray
    tokens: int  # tokens in blocks (after truncation)
    trained: int  # trained targets in blocks
    examples: int  # examples kept (whole or truncated)
    truncated: int
    dropped: int


def pack_layout(example_file: ExampleFile, seq_len: int, packing: bool = True) -> Layout:
    """Greedy, in file order: consecutive whole examples per block; see the module docstring."""
    import numpy as np

    cap = seq_len + 1
    index = example_file.index()
    starts: list[int] = []
    lengths: list[int] = []
    tokens = trained = kept = truncated = dropped = 0
    extra_trained = 0
    open_start, open_len = -1, 0
    truncated_rows: list[int] = []
    for k, (start, length, first, n_trained) in enumerate(index.tolist()):
        if first < 0 or (length > cap and first >= cap):  # nothing to learn, or the reply lies past the block
            dropped += 1
            if open_len:
                starts.append(open_start), lengths.append(open_len)
                open_len = 0
            continue
        kept += 1
        if length > cap:
            truncated += 1
            truncated_rows.append(k)
            if open_len:
                starts.append(open_start), lengths.append(open_len)
                open_len = 0
            starts.append(start), lengths.append(cap)
            tokens += cap
            continue
        tokens += length
        trained += n_trained
        if packing and open_len and open_len + length <= cap:
            open_len += length
            continue
        if open_len:
            starts.append(open_start), lengths.append(open_len)
        open_start, open_len = start, length
    if open_len:
        starts.append(open_start), lengths.append(open_len)
    if truncated_rows:  # trained targets left inside the block of each truncated example
        mask = np.memmap(example_file.mask_path, dtype=np.uint8, mode="r")
        for k in truncated_rows:
            start = int(index[k, 0])
            extra_trained += int(np.count_nonzero(mask[start:start + cap] & TRAINED))
    return Layout(np.asarray(starts, np.int64), np.asarray(lengths, np.int64), tokens, trained + extra_trained,
                  kept, truncated, dropped)


class PackedBlocks(TokenBlocks):
    """Blocks of whole examples over an example file; batches (B, 3, T+1): ids, loss mask, position ids.

    The data position is TokenBlocks' (epoch, position) over the training blocks; validation is the last
    `val_fraction` of the blocks (at least one).
    """

    def __init__(self, example_file: ExampleFile, seq_len: int, val_fraction: float = 0.05, seed: int = 0,
                 packing: bool = True, pad_id: int = 0) -> None:
        import numpy as np

        if seq_len < 1:
            raise UserError(f"seq_len must be at least 1, got {seq_len}", field="seq_len")
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}", field="val_fraction")
        token_file = example_file.token_file
        layout = pack_layout(example_file, seq_len, packing)
        n_blocks = len(layout.start)
        if layout.trained == 0:  # RELIABILITY.md D7: a zero loss (or NaN) would follow
            raise UserError(f"no example has a trained token within train.seq_len = {seq_len} ({layout.dropped} "
                            "dropped: their replies lie past the block, or nothing is trained); raise train.seq_len "
                            "or check data.train_on", field="data.train_on")
        n_val = max(1, math.ceil(n_blocks * val_fraction)) if val_fraction > 0 else 0
        if n_blocks - n_val < 1:
            raise UserError(f"the data makes {n_blocks} block(s) of {seq_len + 1} tokens: too few for a training and "
                            "a validation block; add examples, lower train.seq_len or set data.val_fraction = 0",
                            field="data.val_fraction")
        self.token_file = token_file
        self.example_file = example_file
        self.layout = layout
        self.seq_len = seq_len
        self.seed = seed
        self.pad_id = pad_id
        self.n_tokens = layout.tokens
        self.n_train_blocks = n_blocks - n_val
        self.n_val_blocks = n_val
        self.train_tokens = int(layout.length[:self.n_train_blocks].sum())
        self.val_tokens = layout.tokens - self.train_tokens
        self.trained_tokens = layout.trained
        self._tokens = np.memmap(token_file.path, dtype=token_file.dtype, mode="r", shape=(token_file.n_tokens,))
        self._mask = np.memmap(example_file.mask_path, dtype=np.uint8, mode="r", shape=(token_file.n_tokens,))
        self._offsets = np.arange(seq_len + 1)
        self._perms: dict[int, np.ndarray] = {}
        self.report: Any = None

    def _block_rows(self, blocks: np.ndarray, torch: Any) -> torch.Tensor:
        import numpy as np

        start, length = self.layout.start[blocks], self.layout.length[blocks]
        valid = self._offsets[None, :] < length[:, None]
        index = np.where(valid, start[:, None] + self._offsets[None, :], 0)
        ids = np.where(valid, self._tokens[index], self.pad_id).astype(np.int64)
        bits = np.where(valid, self._mask[index], 0)
        begins = np.where(bits & START, self._offsets[None, :], 0)
        begins[:, 0] = 0
        positions = self._offsets[None, :] - np.maximum.accumulate(begins, axis=1)  # padding counts on
        both = np.stack([ids, (bits & TRAINED).astype(np.int64), positions.astype(np.int64)], axis=1)
        return torch.from_numpy(both)

    def train_batch(self, epoch: int, position: int, batch_size: int) -> torch.Tensor:
        import torch

        return self._block_rows(self.blocks_at(epoch, position, batch_size), torch)

    def val_batches(self, batch_size: int) -> Any:
        import numpy as np
        import torch

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        for first in range(0, self.n_val_blocks, batch_size):
            count = min(batch_size, self.n_val_blocks - first)
            yield self._block_rows(self.n_train_blocks + first + np.arange(count), torch)

    def describe(self) -> dict[str, int]:
        return {**super().describe(), "trained_tokens": self.trained_tokens, "examples": self.layout.examples,
                "truncated": self.layout.truncated, "dropped": self.layout.dropped}


def split_batch(batch: Any) -> tuple[Any, Any, Any]:
    """(ids, loss mask or None, position ids of the inputs or None) of any batch layout."""
    if batch.dim() == 2:
        return batch, None, None
    return batch[:, 0], batch[:, 1], (batch[:, 2, :-1] if batch.size(1) > 2 else None)


def lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy on (B, T+1) ids, (B, 2, T+1) ids + mask, or (B, 3, T+1) ids + mask + positions.

    The mean is over trained targets; a micro-batch that holds none gives 0 with a gradient (not NaN).
    """
    import torch.nn.functional as F

    ids, mask, positions = split_batch(batch)
    if positions is not None:  # no KV cache: transformers builds the packed mask only without one
        logits = model(input_ids=ids[:, :-1], position_ids=positions, use_cache=False).logits
    else:
        logits = model(input_ids=ids[:, :-1]).logits
    targets = ids[:, 1:]
    if mask is not None:
        targets = targets.masked_fill(mask[:, 1:] == 0, -100)
    flat = logits.reshape(-1, logits.size(-1)).float()
    loss_sum = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss_sum / (targets != -100).sum().clamp(min=1)


def packing_isolates(model: Any) -> bool:
    """Whether this model keeps two examples packed in one row apart when given restarting position ids:
    one forward of two 4-token sequences packed, against the second alone (eval mode, no gradient)."""
    import torch

    training = model.training
    device = model.get_input_embeddings().weight.device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.arange(8, device=device)[None] % vocab
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]], device=device)
    try:
        model.eval()
        with torch.no_grad():
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 4:].float()
            other = ids.clone()
            other[0, :4] = (other[0, :4] + 1) % vocab
            changed = model(input_ids=other, position_ids=positions, use_cache=False).logits[0, 4:].float()
    except (TypeError, ValueError, RuntimeError):  # a model that takes no position ids
        return False
    finally:
        model.train(training)
    return bool(torch.allclose(packed, changed, atol=1e-4, rtol=1e-3))


def resize_embeddings(model: Any, tokenizer: Any) -> None:
    """Rows for tokens a chat template added, started at the mean of the others (transformers' mean resizing)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
