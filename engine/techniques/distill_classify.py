"""Distillation of a sequence classifier (listing 5.4's own case: sentiment on glue/sst2), for distill.py.

Data: rows with a text and a label column (data.label_column; any table source of engine/data/sources.py).
Classes are the distinct labels, in the teacher's order when its config names them (else sorted);
the teacher must already be a classifier over them (the
listing loads gpt2-medium with a new, untrained classification head as the teacher, which teaches
nothing: fine-tune the teacher first, e.g. with this tool's `full` technique on the same rows).
A batch is a LongTensor (B, 2 + seq_len): column 0 the class id, column 1 the text's length, then
the token ids, right-padded. Loss per row, as in the listing: alpha x CE + (1 - alpha) x KL x T^2.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

from engine.errors import UserError

LABEL_SEP = " Label : "  # engine/data/sources.py's classification format: "<column> : <text> Label : <label>"


def rows(spec: Any) -> list[tuple[str, str]]:
    """(text, label) pairs from the data source."""
    from engine.data.sources import DataSource, iter_examples

    source = DataSource.from_spec(spec.data)
    if source.layout().format != "label":
        raise UserError("distilling a classifier needs labelled rows: set data.label_column (and data.text_column)",
                        field="data.label_column")
    out = []
    for ex in iter_examples(source):
        cut = ex.text.rfind(LABEL_SEP)
        head, label = ex.text[:cut], ex.text[cut + len(LABEL_SEP):]
        out.append((head.split(" : ", 1)[1], label))
    if len(out) < 2:
        raise UserError(f"data.path: {len(out)} labelled row(s); need at least 2", field="data.path")
    return out


class ClassRows:
    """The data object the trainer reads (the interface of token_cache.TokenBlocks)."""

    def __init__(self, pairs: list[tuple[str, str]], classes: list[str], tokenizer: Any, seq_len: int,
                 val_fraction: float, seed: int) -> None:
        import torch

        self.classes = classes
        index = {c: i for i, c in enumerate(self.classes)}
        self.examples = torch.full((len(pairs), 2 + seq_len), tokenizer.pad_token_id, dtype=torch.long)
        for i, (text, label) in enumerate(pairs):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:seq_len] or [tokenizer.eos_token_id]
            self.examples[i, 0], self.examples[i, 1] = index[label], len(ids)
            self.examples[i, 2: 2 + len(ids)] = torch.tensor(ids)
        n_val = min(math.ceil(len(pairs) * val_fraction), len(pairs) - 1) if val_fraction > 0 else 0
        self.n_train_blocks, self.n_val_blocks, self.seed = len(pairs) - n_val, n_val, seed
        digest = hashlib.sha256(self.examples.numpy().tobytes() + "\n".join(self.classes).encode()).hexdigest()
        self.fingerprint = f"classes-{digest[:16]}"
        self._perm: tuple[int, Any] | None = None

    def permutation(self, epoch: int) -> Any:
        import numpy as np

        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_train_blocks))
        return self._perm[1]

    def advance(self, epoch: int, position: int, batch_size: int) -> tuple[int, int]:
        return divmod(epoch * self.n_train_blocks + position + batch_size, self.n_train_blocks)

    def train_batch(self, epoch: int, position: int, batch_size: int) -> Any:
        import torch

        picked = []
        for k in range(batch_size):
            e, row = divmod(epoch * self.n_train_blocks + position + k, self.n_train_blocks)
            picked.append(int(self.permutation(e)[row]))
        return self.examples[torch.tensor(picked)]

    def val_batches(self, batch_size: int) -> Iterator[Any]:
        for first in range(self.n_train_blocks, self.n_train_blocks + self.n_val_blocks, batch_size):
            yield self.examples[first: min(first + batch_size, self.n_train_blocks + self.n_val_blocks)]


def class_order(teacher_path: str, pairs: list[tuple[str, str]]) -> list[str]:
    """The data's classes in the teacher's order when its config names them, else sorted."""
    from engine.models.pretrained import load_config

    found = sorted({label for _, label in pairs})
    config = load_config(teacher_path, "options.teacher")
    if config.num_labels != len(found):
        raise UserError(f"options.teacher: the teacher classifies into {config.num_labels} classes, the data "
                        f"has {len(found)} ({', '.join(found[:5])}); fine-tune the teacher on these labels first",
                        field="options.teacher")
    named = [str(config.id2label[i]) for i in range(config.num_labels)]
    return named if sorted(named) == found else found


def load_classifiers(spec: Any, teacher_path: str, classes: list[str], teacher_dtype: Any) -> tuple[Any, Any, Any]:
    """(teacher, student, tokenizer): both classifiers over `classes`; the student's head may be new."""
    import torch

    from engine.models.pretrained import load_pretrained

    labels = {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
              "label2id": {c: i for i, c in enumerate(classes)}}
    teacher, tokenizer = load_pretrained(teacher_path, "options.teacher", "classification",
                                         **({"dtype": teacher_dtype} if teacher_dtype else {}))
    torch.manual_seed(spec.seed)  # the student's new classification head
    student, student_tokenizer = load_pretrained(spec.model.path, "model.path", "classification", model=spec.model,
                                                 config_updates={**labels, "pad_token_id": tokenizer.pad_token_id})
    teacher.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 style models find the last token by it
    return teacher, student, student_tokenizer


def loss(prep: Any, batch: Any) -> tuple[Any, Any]:
    """(CE, KL x T^2) on class logits, means over the batch's rows; distill.loss combines and records them."""
    import torch
    import torch.nn.functional as F

    labels, lengths, ids = batch[:, 0], batch[:, 1], batch[:, 2:]
    mask = (torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]).long()
    teacher, T = prep.extra["teacher"], prep.extra["T"]
    student_logits = prep.model(input_ids=ids, attention_mask=mask).logits.float()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits.float()
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.softmax(teacher_logits / T, dim=-1),
                  reduction="batchmean") * T * T
    return ce, kl
