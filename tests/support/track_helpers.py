"""Shared pieces of the tracking tests: a webhook receiver on 127.0.0.1, a tracker that always fails, an
overfitting corpus."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Receiver:
    """What the local endpoint was sent: (path, JSON body) in order of arrival."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.fail_first = 0  # answer this many requests with 503 first (the sender retries)

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str = "/hook") -> list[dict[str, Any]]:
        return [body for p, body in self.posts if p == path]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if receiver.fail_first > 0:
                receiver.fail_first -= 1
                self.send_response(503)
                self.end_headers()
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"raw": raw.decode(errors="replace")}
            receiver.posts.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


class BoomTracker:
    """A tracker (engine/track/trackers.py's interface) whose every call raises; counts the calls."""

    calls = 0

    def _boom(self, *args: Any, **kwargs: Any) -> None:
        type(self).calls += 1
        raise RuntimeError("tracker backend unreachable")

    log_dict = log_text = close = _boom


def overfit_corpus(folder: Path) -> Path:
    """Training text the model learns fast (few short sentences over and over) and a validation tail of digits
    it never sees: as the model fits the sentences, the eval loss on the digits goes up."""
    rng = random.Random(1)
    words = "the cat sat on a mat".split()
    train = [" ".join(rng.choice(words) for _ in range(5)) + "." for _ in range(1500)]
    tail = ["".join(rng.choice("0123456789") for _ in range(24)) for _ in range(200)]
    path = folder / "overfit.txt"
    path.write_text("\n".join(train + tail) + "\n")
    return path
