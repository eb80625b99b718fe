"""A multi-turn conversation with a run's model through its chat template, each reply streamed token by token
(transformers' TextIteratorStreamer, generation in a thread) and ended at the end-of-turn token.

Every turn renders the whole conversation again through the template, so the model sees what it saw in
training: earlier turns, the system prompt, its own previous replies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import UserError

CHATS_DIR = "chats"  # <run>/chats/ holds saved conversations


def save_conversation(run: Path, source: str, messages: list[dict[str, Any]], path: Path | None = None) -> Path:
    """A conversation as JSON ({"run", "source", "messages"}, a row a chat dataset can take), in <run>/chats/
    unless `path` says where; written whole or not at all. Local and hosted chats save through it."""
    target = path or run / CHATS_DIR / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"run": run.name, "source": source, "messages": messages},
                              ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


class Chat:
    """One conversation; `reply` adds a user turn and the model's answer."""

    def __init__(self, run: Path, *, checkpoint_ref: str | None = None, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.7, top_k: int = 50, seed: int = 0) -> None:
        from engine.serve.generate import load_for_inference, stop_ids

        if max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1", field="max_new_tokens")
        self.model, self.tokenizer, self.source = load_for_inference(run, checkpoint_ref)
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"run {run.name}'s tokenizer has no chat template (it trained on plain text): "
                            "`llm-wizard generate` continues text instead", field="run")
        self.run, self.system = run, system
        self.options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed}
        self.stops = stop_ids(self.tokenizer)
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self) -> Any:
        """The conversation so far through the template, ready for the reply; the oldest tokens dropped past the context."""
        text = self.tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        config = self.model.config
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
        return ids[:, -max(1, limit - self.options["max_new_tokens"]):]

    def reply(self, text: str, on_text: Callable[[str], None] = lambda _: None) -> str:
        """The model's answer to `text`, handed to `on_text` piece by piece as it is generated."""
        import torch
        from transformers import TextIteratorStreamer

        self.messages.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        temperature = self.options["temperature"]
        torch.manual_seed(self.options["seed"] + len(self.messages))
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                      max_new_tokens=self.options["max_new_tokens"], do_sample=temperature > 0,
                      temperature=temperature if temperature > 0 else None,
                      top_k=self.options["top_k"] if temperature > 0 else None,
                      eos_token_id=self.stops, pad_token_id=self.stops[0] if self.tokenizer.pad_token_id is None
                      else self.tokenizer.pad_token_id)
        failed: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
                failed.append(e)
                streamer.end()

        thread = threading.Thread(target=work, name="llmw-chat-generate", daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            on_text(piece)
        thread.join()
        if failed:
            self.messages.pop()
            raise failed[0]
        answer = "".join(pieces).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def save(self, path: Path | None = None) -> Path:
        return save_conversation(self.run, self.source, self.messages, path)
