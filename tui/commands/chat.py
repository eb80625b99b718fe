"""`llm-wizard chat`: talk with a run's model, turn after turn, through its chat template; replies stream."""

from __future__ import annotations

import argparse
import contextlib
import sys

HELP = "multi-turn chat with a run's model through its chat template"
COMMANDS_HELP = "/reset starts over, /save [FILE] writes the conversation as JSON, /exit (or Ctrl-D) leaves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("--checkpoint", metavar="STEP", help="a checkpoint's step or name instead of the newest")
    parser.add_argument("--system", metavar="TEXT", help="a system prompt for the conversation")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the longest reply, in tokens")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.paths import runs_dir
    from engine.runfolder.folder import resolve_run
    from engine.serve.chat import Chat
    from engine.serve.openai_chat import OpenAIChat, hosted
    from tui.output import err, quiet_loading

    quiet_loading()
    run_path = resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))
    err().print(f"[dim]loading {run_path.name}...[/]")
    with contextlib.redirect_stdout(sys.stderr):  # libraries that print notices on stdout (deepspeed's logger)
        remote = hosted(run_path)  # a hosted fine-tune: its ft: model answers through the service's API
        chat = (OpenAIChat if remote else Chat)(run_path, checkpoint_ref=args.checkpoint, system=args.system,
                                                max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                                top_k=args.top_k, seed=args.seed)
    how = "through the API" if remote else "through its chat template"
    err().print(f"[dim]chatting with {run_path.name} ({chat.source}) {how}. {COMMANDS_HELP}[/]")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            err().print("[dim]conversation cleared[/]")
            continue
        if text == "/save" or text.startswith("/save "):
            where = text[len("/save"):].strip()
            try:
                saved = chat.save(Path(where).expanduser() if where else None)
            except OSError as e:  # a bad path: said, and the conversation goes on
                err().print(f"[bold red]error:[/] /save: cannot write {where or 'the conversation'}: {e.strerror}")
                continue
            err().print(f"[dim]saved {len(chat.messages)} messages to {saved}[/]")
            continue
        if text.startswith("/"):
            err().print(f"[yellow]unknown command {text.split()[0]}[/]: {COMMANDS_HELP}")
            continue
        sys.stdout.write("model> ")
        sys.stdout.flush()
        chat.reply(text, lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n")
        sys.stdout.flush()
