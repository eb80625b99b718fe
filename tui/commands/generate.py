"""`llm-wizard generate`: sample text from a run's latest checkpoint or final model.

stdout holds the generated text alone (scripts pipe it); where it came from, and on a terminal the prompt
it continues, go to stderr. The prompt is an argument, a file (--prompt-file PATH) or standard input ('-'), at
most MAX_PROMPT_BYTES of UTF-8.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

HELP = "sample text from a run's latest checkpoint or final model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("prompt", nargs="?", help="the text to continue (or answer); '-' reads standard input")
    parser.add_argument("--prompt-file", "--file", dest="file", metavar="PATH",
                        help="read the prompt from this file instead ('-': standard input); at most 1 MiB")
    parser.add_argument("--checkpoint", metavar="STEP", help="a checkpoint's step or name instead of the newest")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true",
                        help="a run trained on conversations: continue the prompt as plain text instead of answering "
                             "it through the chat template")
    parser.add_argument("--json", action="store_true", help='print {"text", "source", "chat"}')


MAX_PROMPT_BYTES = 1 << 20  # 1 MiB: far past any context a model here holds, short of filling memory


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt from the argument, --prompt-file PATH, or standard input ('-' either way), as UTF-8 text of at
    most MAX_PROMPT_BYTES; a UserError says which source failed and why."""
    from engine.errors import UserError

    if args.file is not None and args.prompt is not None:
        raise UserError("give the prompt as an argument or --prompt-file, not both", field="prompt")
    if args.file is not None and args.file != "-":
        try:
            with open(args.file, "rb") as f:
                return _text(f, f"--prompt-file {args.file}")
        except OSError as e:
            raise UserError(f"--prompt-file {args.file}: {e.strerror or e}", field="prompt") from None
    if "-" in (args.file, args.prompt):
        if sys.stdin is None or sys.stdin.closed:
            raise UserError("standard input is closed: give the prompt as an argument or --prompt-file PATH",
                            field="prompt")
        return _text(getattr(sys.stdin, "buffer", sys.stdin), "standard input")
    if args.prompt is None:
        raise UserError("no prompt: give it as an argument, --prompt-file PATH, or '-' to read standard input",
                        field="prompt")
    return args.prompt


def _text(stream: Any, where: str) -> str:
    from engine.errors import UserError

    data = stream.read(MAX_PROMPT_BYTES + 1)
    if isinstance(data, str):  # a text stream (tests, a wrapped stdin)
        data = data.encode("utf-8")
    if len(data) > MAX_PROMPT_BYTES:
        raise UserError(f"{where}: the prompt is over {MAX_PROMPT_BYTES >> 20} MiB; give a shorter one (the model "
                        "reads only the last of it that fits its context)", field="prompt")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (invalid byte at offset {e.start})", field="prompt") from None


def run(args: argparse.Namespace) -> int:
    from engine.serve.generate import generate, trained_on_chat
    from engine.paths import runs_dir
    from engine.runfolder.folder import resolve_run
    from tui.output import err, print_json, quiet_loading

    prompt = read_prompt(args)
    quiet_loading()
    run_path = resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))
    with contextlib.redirect_stdout(sys.stderr):  # libraries that print notices on stdout (deepspeed's logger)
        text, source = generate(run_path, prompt, checkpoint_ref=args.checkpoint,
                                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                seed=args.seed, chat=False if args.raw else None)
    chat = not args.raw and trained_on_chat(run_path)
    if args.json:
        print_json({"text": text, "source": source, "chat": chat})
        return 0
    err().print(f"[dim]from {source}" + (", through its chat template" if chat else "") + "[/]")
    if not chat and sys.stdout.isatty():  # on a terminal the continuation reads on from its prompt
        sys.stderr.write(prompt)
        sys.stderr.flush()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0
