"""`llm-wizard --plain`: questionary prompts fed keys through a pipe write the same spec as the
Textual wizard's choices."""

from __future__ import annotations

import tomllib

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from engine.spec import from_dict
from tui.plain import Prompts, run_plain
from tui.wizard import Choices, spec_dict

ENTER = "\r"
DOWN = "\x1b[B"


def test_plain_wizard_writes_the_spec(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello plain wizard\n" * 200)
    with create_pipe_input() as pipe:
        # technique: the list starts on the recommendation (LoRA); up twice -> scratch
        pipe.send_text("\x1b[A\x1b[A" + ENTER)
        pipe.send_text(ENTER)  # architecture gpt2
        pipe.send_text(ENTER)  # size tiny
        pipe.send_text("\x7f" * 10 + str(corpus) + ENTER)  # data: replace "stdlib"
        pipe.send_text(DOWN + ENTER)  # steps 500 -> 1000
        pipe.send_text(ENTER)  # GPUs: the proposal, both (a tiny model fits one GPU: DDP over all)
        pipe.send_text(ENTER)  # machines: 1
        pipe.send_text(ENTER)  # strategy: the proposal, ddp
        pipe.send_text("y")  # save (a confirm takes one key)
        pipe.send_text("n")  # do not launch
        code = run_plain(runs_dir=str(tmp_path / "runs"), prompts=Prompts(input=pipe, output=DummyOutput()),
                         cwd=tmp_path)
    assert code == 0 and not (tmp_path / "runs").exists()
    saved = from_dict(tomllib.loads((tmp_path / "scratch.toml").read_text()))
    expected = from_dict(spec_dict(Choices(dataset=str(corpus), max_steps=1000, num_processes=2)))
    assert saved == expected and (saved.distributed.num_processes, saved.distributed.strategy) == (2, "ddp")


def test_plain_wizard_writes_a_hosted_spec_without_local_training_questions(tmp_path, monkeypatch) -> None:
    from openai_helpers import chat_file

    from engine.techniques import openai as hosted_openai
    from engine.vocabulary import TECHNIQUES

    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = chat_file(tmp_path, 12)
    names = [t.name for t in TECHNIQUES]
    with create_pipe_input() as pipe:
        pipe.send_text(DOWN * (names.index("openai") - names.index("lora")) + ENTER)  # from the recommendation
        pipe.send_text(ENTER)  # the base model: the default
        pipe.send_text("\x7f" * 4 + "2" + ENTER)  # epochs
        pipe.send_text("\x7f" * 10 + str(data) + ENTER)
        pipe.send_text("y")  # keep the columns found
        pipe.send_text(ENTER)  # every reply trained
        pipe.send_text("y")  # save
        pipe.send_text("n")  # do not launch (no steps, GPUs or estimate were asked)
        code = run_plain(runs_dir=str(tmp_path / "runs"), prompts=Prompts(input=pipe, output=DummyOutput()),
                         cwd=tmp_path)
    assert code == 0
    saved = from_dict(tomllib.loads((tmp_path / "openai.toml").read_text()))
    assert saved.technique == "openai" and saved.data.path == str(data)
    assert saved.options == {"model": hosted_openai.DEFAULTS["model"], "n_epochs": 2}
    hosted_openai.options(saved)


def test_plain_without_terminal_input_says_so_and_exits_2(tmp_path) -> None:
    """stdin at its end (/dev/null) or closed: one line and exit 2, not EOFError or AttributeError."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LLM_WIZARD_RUNS": str(tmp_path)}
    argv = [sys.executable, "-m", "tui.cli", "--plain"]
    ran = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env),
           subprocess.Popen(f"exec {' '.join(argv)} 0<&-", shell=True, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env)]
    for proc in ran:
        err = proc.communicate(timeout=120)[1].decode()
        assert proc.returncode == 2 and "no terminal input: pass a spec to train" in err, err
        assert "Traceback" not in err
