"""Notifications: tell a person when the run ends, fails, pauses itself or rolls back, wherever they are.

`notify.urls` are Apprise URLs (ntfy://, slack://, discord://, mailto://, json://...; apprise does the sending)
or a plain http(s) webhook (a JSON POST through the standard library). A URL holding a secret can be written
`$NAME` and read from the environment, so it never lands in spec.toml. What is sent (`Notifier.message_for`):
- the job ended: done, failed (with its error), stopped;
- a guard paused the run (an alert followed at once by the paused state; a person's own pause is not sent);
- an automatic rollback;
- any other alert from `notify.severity` up (default error).
Each message has the run id, state, step, last loss and the command to attach. `Notifier` is a hub sink
(engine/track/hub.py): it sends from the hub's thread, each URL tried `TRIES` times with a growing pause,
and a URL that still fails is one alert (without the URL's secret parts), never a stop.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from engine.cloud.marker import vm_hint
from engine.errors import UserError
from engine.runfolder import events as ev

TRIES = 3
BACKOFF_S = 1.0  # then 2 s, 4 s...
TIMEOUT_S = 10.0
LEVELS = {"info": 0, "warning": 1, "error": 2, "none": 99}
WEB_SCHEMES = ("http", "https", "json", "jsons", "form", "forms", "xml", "xmls")  # where the host is just a host
QUIET_KINDS = ("tracker", "notify")  # about the messengers themselves: never sent through them


@dataclass(frozen=True)
class Message:
    event: str  # done | failed | stopped | paused | rollback | alert | test
    title: str
    body: str
    run: str
    state: str
    step: int | None
    loss: float | None
    attach: str


def resolve(url: str) -> str:
    """`$NAME` read from the environment; a UserError saying so when it is not set."""
    if not url.startswith("$"):
        return url
    value = os.environ.get(url[1:], "")
    if not value:
        raise UserError(f"notify.urls: {url} is not set in this environment", field="notify.urls")
    return value


def shown(url: str) -> str:
    """A URL as it may be written down: a web address's scheme and host; of any other, its scheme only (an Apprise
    URL's host and path are often its tokens: slack://TokenA/TokenB/TokenC)."""
    if url.startswith("$"):
        return url
    parts = urlsplit(url)
    if parts.scheme not in WEB_SCHEMES:
        return f"{parts.scheme}://…"
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def post_json(url: str, message: Message) -> None:
    """The plain webhook: the message's fields as a JSON object."""
    body = json.dumps(asdict(message)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json",
                                                              "User-Agent": "llm-wizard"}, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")


def send_apprise(url: str, message: Message) -> None:
    try:
        import apprise
    except ImportError:
        raise RuntimeError("apprise is not installed here (pip install apprise)") from None
    sender = apprise.Apprise()
    if not sender.add(url):
        raise ValueError("apprise does not understand this URL")
    if not sender.notify(title=message.title, body=message.body):
        raise OSError("apprise could not deliver it")


def send_one(url: str, message: Message) -> None:
    url = resolve(url)
    (post_json if urlsplit(url).scheme in ("http", "https") else send_apprise)(url, message)


def send(urls: list[str], message: Message, *, tries: int | None = None,
         backoff_s: float | None = None) -> dict[str, str | None]:
    """Each URL tried `tries` times (TRIES); {shown URL: None when sent, else the last error}."""
    tries, backoff_s = tries or TRIES, BACKOFF_S if backoff_s is None else backoff_s
    results: dict[str, str | None] = {}
    for url in urls:
        error: str | None = None
        for attempt in range(tries):
            try:
                send_one(url, message)
                error = None
                break
            except UserError as e:
                error = str(e)
                break
            except Exception as e:  # noqa: BLE001 - any failure of a messenger is reported, never raised
                error = f"{type(e).__name__}: {e}"
                if attempt + 1 < tries:
                    time.sleep(backoff_s * 2 ** attempt)
        results[shown(url)] = error
    return results


class Notifier:
    """The sink: follows the run's events, decides what a person should hear, sends it."""

    name = "notifications"

    def __init__(self, events: Any, run_id: str, urls: list[str], severity: str = "error", *,
                 tries: int | None = None, backoff_s: float | None = None) -> None:
        self.events, self.run_id, self.urls, self.level = events, run_id, list(urls), LEVELS[severity]
        self.tries, self.backoff_s = tries, backoff_s
        self.state, self.step, self.loss = "starting", None, None
        self.pending: ev.Alert | None = None  # an error alert: a guard's pause may follow it at once
        self.error: str | None = None
        self.sent: list[Message] = []

    def message(self, event: str, what: str) -> Message:
        loss = f", last loss {self.loss:.4f}" if self.loss is not None else ""
        attach = f"llm-wizard attach {self.run_id}"
        body = f"{what}\nrun {self.run_id}: {self.state} at step {self.step or 0}{loss}\n{attach}"
        return Message(event, f"llm-wizard: {self.run_id} {event}", body, self.run_id, self.state, self.step,
                       self.loss, attach)

    def message_for(self, e: ev.Event) -> list[Message]:
        """What this event means to a person (also the state it keeps: step, loss, the pending alert)."""
        out: list[Message] = []
        pending, self.pending = self.pending, None
        if isinstance(e, ev.State) and e.state == "paused" and pending is not None:
            self.state, self.step = "paused", e.step
            return [self.message("paused", f"paused by a guard: {pending.kind}: {pending.message}")]
        if pending is not None:
            out.append(self.message("alert", f"{pending.kind}: {pending.message}"))
        if isinstance(e, ev.Metrics):
            self.step, self.loss = e.step, e.train_loss
        elif isinstance(e, ev.State):
            self.state, self.step = e.state, e.step
        elif isinstance(e, ev.Error):
            self.error = e.message
        elif isinstance(e, ev.Done):
            self.state, self.step = e.state, e.step
            what = {"done": "finished", "failed": f"failed: {self.error or 'see job.log'}",
                    "stopped": "stopped"}.get(e.state, e.state)
            if (hint := vm_hint()) is not None:  # on a VM `llm-wizard cloud create` made: offer stop/delete
                what += f"\n{hint}"
            out.append(self.message(e.state if e.state in ("done", "failed", "stopped") else "done", what))
        elif isinstance(e, ev.Alert) and e.kind not in QUIET_KINDS:
            if e.kind == "rollback" and e.checkpoint is not None and e.severity != "error":
                out.append(self.message("rollback", e.message))  # an automatic rollback took place
            elif e.severity == "error":
                self.pending = e  # sent with the next event: alone, or as the pause it caused
            elif LEVELS.get(e.severity, 1) >= self.level:
                out.append(self.message("alert", f"{e.kind}: {e.message}"))
        return out

    def on_event(self, event: ev.Event) -> None:
        for message in self.message_for(event):
            if message.event == "alert" and self.level > LEVELS["error"]:
                continue
            self.deliver(message)

    def deliver(self, message: Message) -> None:
        self.sent.append(message)
        for where, error in send(self.urls, message, tries=self.tries, backoff_s=self.backoff_s).items():
            if error is not None:
                self.events.emit(ev.Alert(step=self.step, kind="notify", severity="warning", suggest=None,
                                          message=f"the {message.event} notification to {where} was not sent "
                                                  f"after {self.tries or TRIES} tries: {error[:200]}"))

    def close(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if self.level <= LEVELS["error"]:
                self.deliver(self.message("alert", f"{pending.kind}: {pending.message}"))
