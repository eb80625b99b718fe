"""The hub between the event log and its consumers (trackers, notifications), off the training loop's thread.

`Hub.on_event` is called by `EventLog.emit` on the loop's thread: it only puts the event on each consumer's
bounded queue (never waits: when a queue is full the event is dropped there and counted). Each consumer (a
"sink") has a daemon thread of its own, so a webhook that takes seconds to time out never holds back the
TensorBoard files. A sink that raises is switched off and said once, as an alert in the run's own events; the
run goes on. `close` (at the end of the job) lets the threads drain what is queued, within a bound, so the last
notifications still go out.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Protocol

from engine.runfolder import events as ev
from engine.runfolder.redact import redact

QUEUE = 4096  # events waiting for one sink; a metrics event a step at most, so minutes of them
CLOSE_S = 60.0  # at the end: how long the job waits for the queues to drain (notifications' retries)


class Sink(Protocol):
    name: str

    def on_event(self, event: ev.Event) -> None: ...

    def close(self) -> None: ...


class _Lane:
    """One sink, its queue and its thread."""

    def __init__(self, hub: Hub, sink: Sink) -> None:
        self.hub, self.sink = hub, sink
        self.queue: queue.Queue[ev.Event | None] = queue.Queue(QUEUE)
        self.dropped = self.warned = 0
        self.on = True
        self.thread = threading.Thread(target=self._work, name=f"llmw-track-{sink.name}", daemon=True)
        self.thread.start()

    def put(self, event: ev.Event | None) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while True:
            event = self.queue.get()
            if event is None:
                return
            if self.on:
                self.call("on_event", event)
            if self.dropped > self.warned:  # said once per burst, from this thread
                self.warned = self.dropped
                self.hub.alert(f"{self.sink.name} fell behind: {self.warned} events were not passed on to it")

    def call(self, method: str, *args: Any) -> None:
        try:
            getattr(self.sink, method)(*args)
        except Exception as e:  # noqa: BLE001 - a tracker never stops the run: off, said once
            if self.on:
                self.on = False
                self.hub.alert(f"{self.sink.name} failed ({type(e).__name__}: {str(e)[:300]}) and is switched off; "
                               "the run goes on")


class Hub:
    def __init__(self, events: Any, sinks: list[Sink], *, close_s: float = CLOSE_S) -> None:
        self.events, self.close_s = events, close_s
        self.step: int | None = None  # the newest step an event named (for the alerts)
        self.lanes = [_Lane(self, sink) for sink in sinks]

    @property
    def sinks(self) -> list[Sink]:
        """The sinks still on."""
        return [lane.sink for lane in self.lanes if lane.on]

    @property
    def dropped(self) -> int:
        return sum(lane.dropped for lane in self.lanes)

    def on_event(self, event: ev.Event) -> None:
        """The loop's side: never blocks."""
        step = getattr(event, "step", None)
        self.step = step if isinstance(step, int) else self.step
        for lane in self.lanes:
            if lane.on:
                lane.put(event)

    def close(self) -> None:
        deadline = time.monotonic() + self.close_s
        for lane in self.lanes:
            try:  # waits for room: the thread is draining; one stuck past the deadline is left behind
                lane.queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
        for lane in self.lanes:
            lane.thread.join(max(0.0, deadline - time.monotonic()))
            if lane.on and not lane.thread.is_alive():
                lane.call("close")

    def alert(self, message: str) -> None:
        try:
            self.events.emit(ev.Alert(step=self.step, kind="tracker", severity="warning", suggest=None,
                                      message=redact(message)))
        except OSError:  # the log closed while a thread was still draining past its bound
            pass
