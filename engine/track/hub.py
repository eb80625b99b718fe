"""The hub between the event log and its consumers (trackers, notifications), off the training loop's thread.

`Hub.on_event` is called by `EventLog.emit` on the loop's thread: it only puts the event on a bounded queue
(never waits: when the queue is full the event is dropped and counted). One daemon thread takes them off and
hands each to every sink. A sink that raises is switched off and said once, as an alert in the run's own
events; the run goes on. `close` (at the end of the job) lets the thread drain what is queued, within a bound,
so the last notifications still go out.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

from engine.runfolder import events as ev
from engine.runfolder.redact import redact

QUEUE = 4096  # events waiting for the thread; a metrics event a step at most, so minutes of them
CLOSE_S = 60.0  # at the end: how long the job waits for the queue to drain (notifications' retries)


class Sink(Protocol):
    name: str

    def on_event(self, event: ev.Event) -> None: ...

    def close(self) -> None: ...


class Hub:
    def __init__(self, events: Any, sinks: list[Sink], *, close_s: float = CLOSE_S) -> None:
        self.events, self.sinks, self.close_s = events, list(sinks), close_s
        self.queue: queue.Queue[ev.Event | None] = queue.Queue(QUEUE)
        self.dropped = 0
        self.step: int | None = None  # the newest step an event named (for the alerts)
        self.thread = threading.Thread(target=self._work, name="llmw-track", daemon=True)
        self.thread.start()

    # ---- the loop's side: never blocks ---------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        try:
            self.queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self.thread.join(self.close_s)
        for sink in self.sinks:
            self._call(sink, "close")

    # ---- the thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        warned = 0
        while True:
            event = self.queue.get()
            if event is None:
                return
            for sink in list(self.sinks):
                self._call(sink, "on_event", event)
            step = getattr(event, "step", None)
            self.step = step if isinstance(step, int) else self.step
            if self.dropped > warned:  # said once per burst, from this thread
                warned = self.dropped
                self._alert("tracker", f"the trackers fell behind: {warned} events were not passed on to them")

    def _call(self, sink: Sink, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as e:  # noqa: BLE001 - a tracker never stops the run: off, said once
            if sink in self.sinks:
                self.sinks.remove(sink)
                self._alert("tracker", f"{sink.name} failed ({type(e).__name__}: {str(e)[:300]}) and is switched "
                                       "off; the run goes on")

    def _alert(self, kind: str, message: str) -> None:
        try:
            self.events.emit(ev.Alert(step=self.step, kind=kind, severity="warning", suggest=None,
                                      message=redact(message)))
        except OSError:  # the log closed while this thread was still draining past its bound
            pass
