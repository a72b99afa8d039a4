"""Continuous batching's thread: one forward step at a time, off the event loop.

The scheduler owns a ``RunningBatch`` on a dedicated thread. Callers (on the
event loop) only put commands in its inbox: add a request, cancel one, stop;
the thread drains the inbox between steps, so a cancelled request leaves the
batch (and frees its KV blocks) at the next step. After each step it delivers
every request's new events in one ``call_soon_threadsafe`` (see
``sequence.EventSink``) and publishes a stats snapshot; the event loop never
waits on the model.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import torch

from firebox.errors import ServiceUnavailable
from firebox.inference.local.running_batch import RunningBatch
from firebox.inference.local.sequence import RequestGroup
from firebox.inference.local.stats import EngineStats

log = logging.getLogger(__name__)


class EngineClosed(ServiceUnavailable):
    """The engine was closed; it accepts no more requests."""

    default_code = "engine_closed"


class Scheduler:
    """Runs ``batch`` on its own thread until ``stop``."""

    def __init__(self, batch: RunningBatch, *, num_threads: int | None = None) -> None:
        self._batch = batch
        self._num_threads = num_threads
        self._inbox: deque[tuple[str, RequestGroup]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._stats_lock = threading.Lock()
        self._stats = batch.stats()
        self._thread = threading.Thread(
            target=self._loop, name="firebox-text-scheduler", daemon=True
        )
        self._thread.start()

    # -- caller side (any thread) --------------------------------------------------------

    def submit(self, group: RequestGroup) -> None:
        with self._cond:
            if self._stopping:
                raise EngineClosed("The local text engine is closed; it accepts no more requests.")
            self._inbox.append(("add", group))
            self._cond.notify()

    def cancel(self, group: RequestGroup) -> None:
        with self._cond:
            self._inbox.append(("cancel", group))
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def stats(self) -> EngineStats:
        with self._stats_lock:
            return self._stats

    # -- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self._num_threads:
            torch.set_num_threads(self._num_threads)  # OpenMP: this thread's pool only
        batch = self._batch
        idle = False
        while True:
            with self._cond:
                while not (self._inbox or self._stopping or batch.busy):
                    self._cond.wait()
                if idle and not (self._inbox or self._stopping):
                    self._cond.wait(0.05)  # nothing fitted: retry soon, or on the next command
                commands = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
            for command, group in commands:
                if command == "add":
                    batch.add(group)
                else:
                    batch.cancel(group)
            if stopping:
                closed = EngineClosed(
                    "The local text engine was closed before the request finished."
                )
                for group in batch.live_groups():
                    batch.fail(group, closed)
                self._deliver()
                self._publish()
                return
            try:
                idle = not batch.step()
            except Exception as exc:  # keep serving: fail what was in flight, free it all
                log.exception("local text engine step failed")
                error = ServiceUnavailable(f"The local text engine failed while generating: {exc}")
                for group in batch.live_groups():
                    batch.fail(group, error)
            self._publish()  # before the events: a caller who saw its request end sees it gone
            if self._deliver():
                self._publish()

    def _deliver(self) -> bool:
        """Send the step's events; True if a request was dropped (its event loop is gone)."""
        dropped = False
        for group in self._batch.take_outboxes():
            items, group.outbox = group.outbox, []
            if not group.cancelled and not group.sink.send(items):
                self._batch.cancel(group)
                dropped = True
        return dropped

    def _publish(self) -> None:
        stats = self._batch.stats()
        with self._stats_lock:
            self._stats = stats
