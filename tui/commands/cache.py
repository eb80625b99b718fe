"""`llm-wizard cache list|clear`: what the cache folder holds (token files, trained tokenizers, downloads), and
deleting it. It holds the training data's text as token ids: private to its owner (0700), like the runs."""

from __future__ import annotations

import argparse
import sys
import time

HELP = "list or clear the cache (token files, trained tokenizers, downloads)"
KIND_HELP = "only this kind: tokens, tokenizers, models, datasets or other"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    shown = sub.add_parser("list", help="what is cached: kind, size, age and the data it came from")
    shown.add_argument("--kind", help=KIND_HELP)
    shown.add_argument("--json", action="store_true", help='print {"path", "entries": [{"kind", "name", "path", '
                       '"bytes", "modified", "age_s", "sources"}]}')
    clear = sub.add_parser("clear", help="delete cached entries (rebuilt when a run needs them again)")
    clear.add_argument("--kind", help=KIND_HELP)
    clear.add_argument("--older-than", metavar="AGE", help="only entries untouched for longer: 30d, 12h, 45m")
    clear.add_argument("--yes", action="store_true", help="delete without asking")
    clear.add_argument("--json", action="store_true", help='print {"deleted": [...], "bytes"}')


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def run(args: argparse.Namespace) -> int:
    from engine.data import caches
    from engine.errors import UserError
    from engine.paths import cache_dir
    from tui.output import err, human_bytes, out, print_json

    if args.action == "list":
        found = caches.entries(args.kind)
        if args.json:
            print_json({"path": str(cache_dir()), "entries": [e.to_dict() for e in found]})
            return 0
        if not found:
            out().print(f"nothing cached in {cache_dir()}")
            return 0
        now = time.time()
        for e in found:
            source = f"  from {', '.join(e.sources[:2])}" + (" ..." if len(e.sources) > 2 else "") if e.sources else ""
            line = f"{e.kind:<10} {e.name[:40]:<40} {human_bytes(e.bytes):>10} {_age(now - e.modified):>5}{source}"
            out().print(line, highlight=False, markup=False)
        total = human_bytes(sum(e.bytes for e in found))
        out().print(f"{len(found)} entries, {total} in {cache_dir()}", highlight=False)
        return 0
    older = caches.parse_age(args.older_than) if args.older_than else None
    chosen = caches.select(args.kind, older)
    total = sum(e.bytes for e in chosen)
    if chosen and not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"this would delete {len(chosen)} cache entries ({human_bytes(total)}); pass --yes to "
                            "delete without asking", field="yes")
        err().print(f"delete {len(chosen)} cache entries ({human_bytes(total)}) from {cache_dir()}? [y/N] ", end="")
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            err().print("nothing deleted")
            return 1
    freed = caches.remove(chosen)
    if args.json:
        print_json({"deleted": [e.to_dict() for e in chosen], "bytes": freed})
    else:
        out().print(f"deleted {len(chosen)} cache entries, {human_bytes(freed)} freed", highlight=False)
    return 0
