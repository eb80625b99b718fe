"""`llm-wizard generate`: sample text from a run's latest checkpoint or final model.

stdout holds the generated text alone (scripts pipe it); where it came from, and on a terminal the prompt
it continues, go to stderr. The prompt is an argument, a file (--file) or standard input ('-').
"""

from __future__ import annotations

import argparse
import contextlib
import sys

HELP = "sample text from a run's latest checkpoint or final model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("prompt", nargs="?", help="the text to continue (or answer); '-' reads standard input")
    parser.add_argument("--file", metavar="PATH", help="read the prompt from this file instead")
    parser.add_argument("--checkpoint", metavar="STEP", help="a checkpoint's step or name instead of the newest")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true",
                        help="a run trained on conversations: continue the prompt as plain text instead of answering "
                             "it through the chat template")
    parser.add_argument("--json", action="store_true", help='print {"text", "source", "chat"}')


def read_prompt(args: argparse.Namespace) -> str:
    from engine.errors import UserError

    if args.file is not None and args.prompt is not None:
        raise UserError("give the prompt as an argument or --file, not both", field="prompt")
    if args.file is not None:
        try:
            return open(args.file, encoding="utf-8").read()  # noqa: SIM115 - read whole, closed at once
        except OSError as e:
            raise UserError(f"--file {args.file}: {e.strerror}", field="prompt") from None
        except UnicodeDecodeError:
            raise UserError(f"--file {args.file}: not UTF-8 text", field="prompt") from None
    if args.prompt == "-":
        return sys.stdin.read()
    if args.prompt is None:
        raise UserError("no prompt: give it as an argument, --file PATH, or '-' to read standard input",
                        field="prompt")
    return args.prompt


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
