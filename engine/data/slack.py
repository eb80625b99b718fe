"""A Slack export as training pairs: the conversation before a person's message, and the message.

The book's chapter 4 builds a persona from one person's Slack messages. An export is a folder with
users.json (and channels.json) and one folder per channel holding a JSON file per day
(`general/2024-01-31.json`, a list of messages with `user`, `text`, `ts` and, in threads, `thread_ts`).
For every message of the chosen user, the up to `context` messages before it in the same conversation
(the thread for a thread reply, else the channel, within CONTEXT_GAP_SECONDS) become the prompt, one
`name: text` line each, and the message is the response. Joins, leaves, bots, empty messages and the lines Slack writes for a person ("<@U1> uploaded a file",
"has joined the channel") are skipped.
Day files are read one at a time (memory bounded by the largest day and the open threads' context).
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.corpus import read_text
from engine.errors import UserError

CONTEXT_GAP_SECONDS = 6 * 3600  # a message older than this before a reply belongs to another conversation
KEPT_SUBTYPES = frozenset({None, "thread_broadcast", "me_message", "file_share"})
_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
# Lines Slack writes on a person's behalf (older exports keep them as plain messages): not their words.
_SYSTEM_LINE = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>\s+(?:has joined|has left|joined|left|uploaded a file|"
                          r"shared a file|commented on|set the channel|renamed the channel|pinned|archived)\b")
_LINK = re.compile(r"<(?:#[A-Z0-9]+\|)?([^<>|]+)(?:\|([^<>]*))?>")


@dataclass(frozen=True)
class SlackUser:
    id: str
    name: str  # the display name, else the real name, else the handle
    aliases: tuple[str, ...]  # every name the user can be chosen by (lower case)
    messages: int = 0


@dataclass(frozen=True)
class Turn:
    context: list[tuple[str, str]]  # (name, text) of the preceding messages, oldest first
    name: str
    text: str
    where: str  # day file and message index
    done: int  # export bytes read so far, for progress


def is_export(path: Path) -> bool:
    """A folder with users.json and at least one channel folder of day files."""
    if not (path.is_dir() and (path / "users.json").is_file()):
        return False
    return any(d.is_dir() and any(d.glob("????-??-??.json")) for d in path.iterdir())


def _load_json(path: Path) -> Any:
    text = read_text(path)  # names empty, binary and non-UTF-8 files
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})", field="dataset") from None


def load_users(root: Path) -> dict[str, SlackUser]:
    users = _load_json(root / "users.json")
    if not isinstance(users, list):
        raise UserError(f"{root / 'users.json'}: expected a list of users", field="dataset")
    found: dict[str, SlackUser] = {}
    for i, u in enumerate(users):
        if not isinstance(u, dict) or not isinstance(u.get("id"), str):
            raise UserError(f"{root / 'users.json'}: user {i} has no id", field="dataset")
        profile = u.get("profile") if isinstance(u.get("profile"), dict) else {}
        names = [profile.get("display_name"), profile.get("real_name"), u.get("real_name"), u.get("name")]
        names = [n for n in names if isinstance(n, str) and n.strip()]
        found[u["id"]] = SlackUser(u["id"], names[0] if names else u["id"],
                                   tuple({n.strip().lower() for n in names} | {u["id"].lower()}))
    return found


def day_files(root: Path) -> list[Path]:
    files = sorted(p for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
                   for p in d.glob("????-??-??.json"))
    if not files:
        raise UserError(f"{root}: no channel folders with daily JSON files (general/2024-01-31.json)", field="dataset")
    return files


def _messages(path: Path) -> list[tuple[float, dict[str, Any], int]]:
    """The day's messages that carry text, as (ts, message, index in the file), in time order."""
    day = _load_json(path)
    if not isinstance(day, list):
        raise UserError(f"{path}: expected a list of messages, got {type(day).__name__}", field="dataset")
    kept = []
    for i, m in enumerate(day):
        if not isinstance(m, dict):
            raise UserError(f"{path}: message {i} is not an object", field="dataset")
        if m.get("subtype") not in KEPT_SUBTYPES or m.get("bot_id") or not isinstance(m.get("user"), str):
            continue
        if not isinstance(m.get("text"), str) or not m["text"].strip() or _SYSTEM_LINE.match(m["text"]):
            continue
        try:
            ts = float(m["ts"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: message {i} has no valid ts (got {m.get('ts')!r})", field="dataset") from None
        kept.append((ts, m, i))
    kept.sort(key=lambda t: t[0])
    return kept


def clean(text: str, users: dict[str, SlackUser]) -> str:
    """Slack markup as plain text: <@U1> -> @name, <url|label> -> label, &amp; -> &."""
    text = _MENTION.sub(lambda m: "@" + (users[m[1]].name if m[1] in users else m[1]), text)
    text = _LINK.sub(lambda m: m[2] or m[1], text)
    return html.unescape(text).strip()


def find_user(root: Path, wanted: str, users: dict[str, SlackUser]) -> SlackUser:
    key = wanted.strip().lstrip("@").lower()
    for user in users.values():
        if key and key in user.aliases:
            return user
    ranked = ", ".join(f"{u.name} ({u.messages})" for u in slack_users(root)[:8])
    if not key:
        raise UserError(f"choose the Slack user whose messages to learn (data.slack_user): {ranked}",
                        field="data.slack_user")
    raise UserError(f"no Slack user {wanted!r} in {root / 'users.json'}; users with most messages: {ranked}",
                    field="data.slack_user")


def slack_users(root: Path) -> list[SlackUser]:
    """Every user with their number of messages, most first (for the wizard's choice)."""
    users = load_users(root)
    counts: Counter[str] = Counter()
    for path in day_files(root):
        counts.update(m["user"] for _, m, _ in _messages(path))
    ranked = [SlackUser(u.id, u.name, u.aliases, counts[u.id]) for u in users.values()]
    return sorted(ranked, key=lambda u: (-u.messages, u.name.lower()))


def turns(root: Path, wanted: str, context: int) -> Iterator[Turn]:
    """Every message of `wanted` with the conversation before it, channel by channel, in time order."""
    users = load_users(root)
    target = find_user(root, wanted, users)
    done = 0
    channel: Path | None = None
    recent: deque[tuple[float, str, str]] = deque()
    threads: dict[str, deque[tuple[float, str, str]]] = {}
    found = False
    for path in day_files(root):
        if path.parent != channel:
            channel, recent, threads = path.parent, deque(maxlen=max(context, 1)), {}
        done += path.stat().st_size
        messages = _messages(path)
        if messages:  # threads quiet for longer than the gap can give no more context: bounded memory
            threads = {k: h for k, h in threads.items() if h and messages[0][0] - h[-1][0] <= CONTEXT_GAP_SECONDS}
        for ts, m, i in messages:
            text = clean(m["text"], users)
            if not text:
                continue
            name = users[m["user"]].name if m["user"] in users else m["user"]
            thread = m.get("thread_ts")
            is_reply = isinstance(thread, str) and thread != m.get("ts")
            if is_reply:
                history = threads.get(thread)
                if history is None:  # the parent is on an earlier day we kept, or lost: start empty
                    history = threads[thread] = deque(maxlen=max(context, 1))
            else:
                history = recent
            if m["user"] == target.id:
                kept = [(n, t) for (when, n, t) in history if ts - when <= CONTEXT_GAP_SECONDS][-context:] \
                    if context else []
                found = True
                yield Turn(kept, name, text, f"{path} message {i}", done)
            history.append((ts, name, text))
            if not is_reply and isinstance(thread, str):  # a thread's parent opens the thread's context
                threads[thread] = deque([(ts, name, text)], maxlen=max(context, 1))
    if not found:
        raise UserError(f"{root}: {target.name} ({target.id}) wrote no messages with text", field="data.slack_user")
