"""OpenAI's fine-tuning file: any chat or instruction data as its chat JSONL, its billed tokens and their cost.

Every layout the data path reads as a conversation (engine/data/formats.py: messages, sharegpt, alpaca,
prompt_response, chosen, slack) is written as OpenAI's `{"messages": [{role, content}, ...]}` lines; an
assistant turn that carries no loss gets `"weight": 0` (OpenAI's own way of saying it, which the data path
also reads), so data.train_on = "last_assistant" and `weight: 0` in the input survive the conversion. A
label row (the book's "text : ... Label : ...") becomes one user turn and one assistant turn. Plain text has
no turns to learn and is refused, as is data.train_on = "all" (OpenAI trains assistant turns only).

Tokens are counted with tiktoken when it is installed and its encoding is at hand (it downloads the encoding
once), else estimated at about 4 characters a token, and the report says which. OpenAI bills the training
file's tokens once per epoch; the validation file is not billed. The price table below has its date and
source: prices change, so the estimate says where to check.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.formats import Conversation, Document
from engine.data.sources import DataSource, Skipped, iter_items
from engine.errors import UserError

MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples
AUTO_EPOCHS = 3  # what n_epochs = "auto" usually comes to for a small file: used for the estimate only
# Training price in USD per 1M tokens, by model family (the longest family that starts the model name wins).
PRICES_DATE = "2025-06"
PRICES_SOURCE = "https://openai.com/api/pricing/ (fine-tuning, training)"
TRAINING_PRICE_PER_M: dict[str, float] = {
    "gpt-4.1-nano": 1.50, "gpt-4.1-mini": 5.00, "gpt-4.1": 25.00,
    "gpt-4o-mini": 3.00, "gpt-4o": 25.00, "gpt-3.5-turbo": 8.00,
}
KEPT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")  # OpenAI's message keys
CHARS_PER_TOKEN = 4  # the rough rule for English text when no tokenizer is at hand
MESSAGE_OVERHEAD, EXAMPLE_OVERHEAD = 3, 3  # tokens around each message and each example (OpenAI's cookbook)


@dataclass(frozen=True)
class Cost:
    """What the job will bill, estimated: tokens in the training file x epochs, at the table's price."""
    model: str
    epochs: int
    epochs_auto: bool
    file_tokens: int
    billed_tokens: int
    price_per_m: float | None  # None: the model is not in the table
    counted_by: str

    @property
    def usd(self) -> float | None:
        return None if self.price_per_m is None else self.billed_tokens * self.price_per_m / 1e6

    def describe(self) -> str:
        epochs = f"{self.epochs} epochs" + (" (n_epochs = auto: estimated as 3)" if self.epochs_auto else "")
        tokens = f"about {self.billed_tokens:,} billed tokens ({self.file_tokens:,} a pass x {epochs}; {self.counted_by})"
        if self.usd is None:
            return f"{tokens}; no price known for {self.model} in the table of {PRICES_DATE} ({PRICES_SOURCE})"
        usd = f"about ${self.usd:,.2f}" if self.usd >= 0.01 else "under $0.01"
        return (f"{tokens}: {usd} at ${self.price_per_m:g} per 1M training tokens for {self.model} "
                f"(price table of {PRICES_DATE}, {PRICES_SOURCE}: check it for today's price)")


@dataclass(frozen=True)
class Written:
    """The files written for upload and what they hold."""
    train: Path
    validation: Path | None
    examples: int
    val_examples: int
    tokens: int  # in the training file
    counted_by: str
    skipped: int  # bad rows left out (data.on_bad_row = "skip")


def price(model: str) -> float | None:
    """USD per 1M training tokens for `model` (a snapshot name or a family), None if not in the table."""
    families = [f for f in TRAINING_PRICE_PER_M if model == f or model.startswith(f + "-")]
    return TRAINING_PRICE_PER_M[max(families, key=len)] if families else None


def check_layout(source: DataSource, train_on: str) -> None:
    """UserError unless the data has turns to learn (conversations, instructions or labels)."""
    if source.kind == "text" or source.layout().format == "text":
        raise UserError("OpenAI fine-tuning learns assistant replies: give chat data (messages, ShareGPT) or "
                        "instruction data (Alpaca, prompt/response), not plain text", field="data.path")
    if train_on == "all":
        raise UserError("data.train_on = \"all\": OpenAI trains the assistant's turns only; use \"assistant\" or "
                        "\"last_assistant\"", field="data.train_on")


def to_row(value: Conversation | Document, train_on: str = "assistant") -> dict[str, Any]:
    """One example as a line of OpenAI's chat fine-tuning file."""
    if isinstance(value, Document):
        if not value.prompt:
            raise UserError("a plain text example has no reply to learn", field="data.path")
        return {"messages": [{"role": "user", "content": value.prompt},
                             {"role": "assistant", "content": value.completion}]}
    trained = list(value.trained)
    if train_on == "last_assistant":
        last = max(k for k, m in enumerate(value.messages) if m["role"] == "assistant")
        trained = [t and k == last for k, t in enumerate(trained)]
    messages = []
    for m, learn in zip(value.messages, trained):
        out = {k: m[k] for k in KEPT_KEYS if k in m}
        if m["role"] == "assistant" and not learn:
            out["weight"] = 0
        messages.append(out)
    row: dict[str, Any] = {"messages": messages}
    if value.tools:
        row["tools"] = list(value.tools)
    return row


def _encoder(model: str) -> tuple[Any, str]:
    """(encode function or None, what counted): tiktoken's encoding for the model if it can be had."""
    try:
        import tiktoken

        name = "cl100k_base" if model.startswith("gpt-3.5") else "o200k_base"
        encoding = tiktoken.get_encoding(name)  # downloads once; offline without a cache this fails
        return encoding.encode, f"counted with tiktoken {name}"
    except Exception:  # noqa: BLE001 - not installed, or the encoding cannot be fetched: estimate instead
        return None, f"estimated at about {CHARS_PER_TOKEN} characters a token (install tiktoken to count exactly)"


def count_tokens(row: dict[str, Any], encode: Any) -> int:
    total = EXAMPLE_OVERHEAD
    for m in row["messages"]:
        text = m.get("content") or ""
        if m.get("tool_calls"):
            text += json.dumps(m["tool_calls"])
        total += MESSAGE_OVERHEAD + (len(encode(text)) if encode else math.ceil(len(text) / CHARS_PER_TOKEN))
    return total


def count_source(source: DataSource, model: str, train_on: str) -> tuple[int, str]:
    """(tokens a pass over the whole data, how they were counted), as the service bills them (the wizard's
    count; a run counts the training file alone)."""
    check_layout(source, train_on)
    encode, counted_by = _encoder(model)
    return sum(count_tokens(to_row(item.value, train_on), encode) for item in iter_items(source)), counted_by


def write_files(source: DataSource, folder: Path, *, model: str, train_on: str, val_fraction: float,
                seed: int) -> Written:
    """train.jsonl (and validation.jsonl when val_fraction leaves at least one example out while the training
    file keeps OpenAI's minimum) in `folder`; UserError for data OpenAI would refuse."""
    check_layout(source, train_on)
    n = sum(1 for _ in iter_items(source, Skipped()))
    if n < MIN_EXAMPLES:
        raise UserError(f"{source.path}: {n} examples; OpenAI fine-tuning needs at least {MIN_EXAMPLES}",
                        field="data.path")
    k = int(n * val_fraction)
    held = set(random.Random(seed).sample(range(n), k)) if k >= 1 and n - k >= MIN_EXAMPLES else set()
    folder.mkdir(parents=True, exist_ok=True)
    encode, counted_by = _encoder(model)
    train_path, val_path = folder / "train.jsonl", folder / "validation.jsonl"
    skipped, tokens = Skipped(), 0
    with open(train_path, "w", encoding="utf-8") as train, open(val_path, "w", encoding="utf-8") as val:
        for index, item in enumerate(iter_items(source, skipped)):
            row = to_row(item.value, train_on)
            (val if index in held else train).write(json.dumps(row, ensure_ascii=False) + "\n")
            if index not in held:
                tokens += count_tokens(row, encode)
    if not held:
        val_path.unlink()
    return Written(train_path, val_path if held else None, n - len(held), len(held), tokens, counted_by,
                   skipped.count)


def estimate(written: Written, model: str, n_epochs: int | str) -> Cost:
    auto = n_epochs == "auto"
    epochs = AUTO_EPOCHS if auto else int(n_epochs)
    return Cost(model, epochs, auto, written.tokens, written.tokens * epochs, price(model), written.counted_by)
