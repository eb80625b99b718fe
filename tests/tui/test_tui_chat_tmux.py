"""`llm-wizard chat` in a real terminal (tmux): two turns typed, the replies streamed, the second answered
with the first in view (the same tokens as the conversation computed in-process), /save writes all four."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from engine.serve.chat import Chat
from export_helpers import trained_run
from test_tui_tmux import Tmux

pytestmark = pytest.mark.slow

FIRST, SECOND = "Name a prime number.", "And at night?"


def test_chat_two_turns_where_the_second_sees_the_first(tmp_path: Path) -> None:
    run = trained_run(tmp_path, "llama", "lora")
    reference = Chat(run, temperature=0, max_new_tokens=8)
    first, second = reference.reply(FIRST), reference.reply(SECOND)
    reference.reset()
    alone = reference.reply(SECOND)
    assert second != alone  # so that equal replies below show the first turn was in the prompt
    saved = tmp_path / "conversation.json"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "LLM_WIZARD_CACHE": str(tmp_path / "cache")}.items())
    term = Tmux("chat")
    term.start(f"env {env} {shlex.quote(sys.executable)} -m tui.cli chat {shlex.quote(str(run))} --temperature 0 "
               "--max-new-tokens 8; sleep 30", width=160)
    try:
        term.wait_for(r"(?m)^you>", timeout=180)  # capture-pane drops trailing spaces
        term.keys(FIRST, "Enter")
        term.wait_for(r"(?s)model>.*\nyou>", timeout=120)
        term.keys(SECOND, "Enter")
        term.wait_for(r"(?s)model>.*model>.*\nyou>", timeout=120)
        term.keys(f"/save {saved}", "Enter")
        term.wait_for(r"saved 4 messages", timeout=60)
        term.keys("/exit", "Enter")
    finally:
        term.kill()
    messages = json.loads(saved.read_text())["messages"]
    assert messages == [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first},
                        {"role": "user", "content": SECOND}, {"role": "assistant", "content": second}]
