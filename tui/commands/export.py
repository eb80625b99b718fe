"""`llm-wizard export`: a run's model as a merged transformers folder, the adapter alone, or GGUF with an
Ollama Modelfile; optionally pushed to a Hub repo with its model card."""

from __future__ import annotations

import argparse
import contextlib
import sys

HELP = "export a run's model: merged / adapter / GGUF (+ Ollama Modelfile), optionally pushed to the Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id (or a unique part of it, or 'latest', or its folder)")
    parser.add_argument("--checkpoint", metavar="STEP", help="a checkpoint's step or name instead of the final model")
    parser.add_argument("--format", default="merged", choices=("merged", "adapter", "gguf"),
                        help="merged: a plain transformers model (the adapter folded in); adapter: the peft adapter "
                             "alone; gguf: for llama.cpp and Ollama (default: merged)")
    parser.add_argument("--quant", choices=("f16", "bf16", "q8_0", "q4_k_m"),
                        help="GGUF type (default f16); q4_k_m needs llama.cpp's quantizer (llama-cpp-python)")
    parser.add_argument("--out", metavar="DIR", help="the folder to write (default: <run>/export/<format>)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--push", metavar="ORG/NAME", help="upload the export to this Hub model repo (created if "
                        "missing; HF_TOKEN or `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="with --push: create the repo private")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (progress stays on stderr)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.errors import UserError
    from engine.paths import runs_dir
    from engine.runfolder.folder import resolve_run
    from engine.serve.export import export
    from tui.output import err, human_bytes, out, print_json, quiet_loading

    if args.private and not args.push:
        raise UserError("--private applies to --push only", field="private")
    if args.push:
        from engine.serve.push import check_repo_id

        check_repo_id(args.push)  # before minutes of exporting
    quiet_loading()
    run_path = resolve_run(args.run, runs_dir(getattr(args, "runs_dir", None)))

    def progress(message: str) -> None:
        err().print(f"[dim]{message}...[/]", markup=True, highlight=False)

    with contextlib.redirect_stdout(sys.stderr):  # libraries that print notices on stdout (deepspeed's logger)
        result = export(run_path, args.format, checkpoint_ref=args.checkpoint, quant=args.quant,
                        out=Path(args.out) if args.out else None, force=args.force, progress=progress)
        if args.push:
            import dataclasses

            from engine.serve.push import push

            message = f"llm-wizard export of {run_path.name} ({result.format}" + (f" {result.quant})" if result.quant else ")")
            result = dataclasses.replace(result, pushed=push(Path(result.path), args.push, private=args.private,
                                                             message=message, progress=progress))
    if args.json:
        print_json(result.to_dict())
        return 0
    console = out()
    kind = f"{result.format} ({result.quant})" if result.quant else result.format
    console.print(f"[bold green]exported[/] {kind} from {result.source}: {result.path} ({human_bytes(result.bytes)})",
                  soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.modelfile:
        console.print(f"Ollama: cd {result.path} && ollama create {run_path.name.lower()} -f Modelfile",
                      highlight=False, soft_wrap=True)
    if result.pushed:
        console.print(f"pushed to {result.pushed['url']}", highlight=False)
    return 0

