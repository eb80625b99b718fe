"""`llm-wizard generate`: sample text from a run's latest checkpoint or final model."""

from __future__ import annotations

import argparse

HELP = "sample text from a run's latest checkpoint or final model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--checkpoint", metavar="STEP", help="a checkpoint's step or name instead of the newest")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true",
                        help="a run trained on conversations: continue the prompt as plain text instead of answering "
                             "it through the chat template")
    parser.add_argument("--json", action="store_true", help='print {"text", "source", "chat"}')


def run(args: argparse.Namespace) -> int:
    from engine.serve.generate import generate, trained_on_chat
    from engine.paths import runs_dir
    from engine.runfolder.folder import resolve_run
    from tui.output import out, print_json

    run_path = resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))
    text, source = generate(run_path, args.prompt, checkpoint_ref=args.checkpoint, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                            chat=False if args.raw else None)
    chat = not args.raw and trained_on_chat(run_path)
    if args.json:
        print_json({"text": text, "source": source, "chat": chat})
    elif chat:
        out().print(f"[dim]from {source}, through its chat template[/]")
        out().print(text, markup=False, highlight=False)
    else:
        out().print(f"[dim]from {source}[/]")
        out().print(args.prompt + text, markup=False, highlight=False)
    return 0
