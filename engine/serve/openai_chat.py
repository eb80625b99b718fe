"""A multi-turn conversation with a hosted run's `ft:` model, through the OpenAI API (technique = "openai").

The same shape as a local run's chat (reset, reply, save, messages, source), so `llm-wizard chat RUN` takes
either: `hosted(run)` says which. The model is final/openai.json's, or one of the job's checkpoints (each is
a model too: `checkpoint_ref` is its step or its checkpoint id, as the run's checkpoint events name them).
The key comes from OPENAI_API_KEY and the service from OPENAI_BASE_URL, as for the run (never from the run
folder); the whole conversation is sent each turn, as the API is stateless.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.runfolder import events as ev
from engine.techniques import openai_api



def hosted(run: Path) -> bool:
    """Whether `run` is a hosted OpenAI fine-tune (its spec names the technique)."""
    import tomllib

    try:
        return tomllib.loads((Path(run) / "spec.toml").read_text(encoding="utf-8")).get("technique") == "openai"
    except (OSError, ValueError):
        return False


def model_of(run: Path, checkpoint_ref: str | None = None) -> str:
    """The ft: model to talk to: the finished job's, or a checkpoint's by step or id."""
    if checkpoint_ref is None:
        return str(openai_api.final_model(run)["model"])
    for event in ev.read(run):
        if isinstance(event, ev.Checkpoint) and checkpoint_ref in (str(event.step), event.name):
            return event.path
    raise UserError(f"run {Path(run).name} has no OpenAI checkpoint {checkpoint_ref!r} (its checkpoint events "
                    "name them by step and id)", field="checkpoint")


class OpenAIChat:
    """One conversation; `reply` adds a user turn and the model's answer (handed to `on_text` whole)."""

    def __init__(self, run: Path, *, checkpoint_ref: str | None = None, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.7, top_k: int = 50, seed: int = 0) -> None:
        if max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1", field="max_new_tokens")
        self.run, self.system = Path(run), system
        self.source = model_of(self.run, checkpoint_ref)
        self.options = {"max_tokens": max_new_tokens, "temperature": temperature, "seed": seed}  # no top_k in the API
        self.api = openai_api.client()
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, on_text: Callable[[str], None] = lambda _: None) -> str:
        self.messages.append({"role": "user", "content": text})
        try:
            with openai_api.calling(f"asking {self.source}"):
                answer = self._ask()
        except BaseException:
            self.messages.pop()  # the turn did not happen: the conversation stays as it was
            raise
        on_text(answer)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _ask(self) -> str:
        import openai

        try:
            done: Any = self.api.chat.completions.create(model=self.source, messages=self.messages, **self.options)
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as e:
            raise UserError(f"{openai_api.service()} is not answering ({type(e).__name__}); try again") from None
        return (done.choices[0].message.content or "").strip()

    def save(self, path: Path | None = None) -> Path:
        from engine.serve.chat import save_conversation

        return save_conversation(self.run, self.source, self.messages, path)
