"""One worker thread that owns an encoder and shares its forward passes between callers.

Why a thread and not ``asyncio.to_thread`` per request: the model is not
thread-safe, and one owner thread lets concurrent requests be merged. While a
forward pass runs, new requests queue up; the next time the worker wakes it
drains everything queued (up to ``max_batch_size`` inputs), tokenizes it
together and runs one padded batch, then hands each caller its slice through
``loop.call_soon_threadsafe``. Under load that means far fewer, fuller forward
passes; when idle a lone request is run at once, with no added wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from firebox.errors import ServiceUnavailable
from firebox.inference.engine import EmbeddingResult

logger = logging.getLogger(__name__)

EncoderInput = str | Sequence[int]


class BatchEncoder(Protocol):
    """What the worker needs of a model: tokenize inputs, encode padded batches."""

    def attach_thread(self) -> None:
        """Prepare the calling (worker) thread; called once before any other method."""
        ...

    def tokenize(self, inputs: Sequence[EncoderInput]) -> list[list[int]]: ...

    def encode(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]: ...


@dataclass(eq=False, slots=True)
class _Job:
    inputs: Sequence[EncoderInput]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EmbeddingResult]
    framed: bool = False  # inputs are the ids the model is fed (tokenized ahead)
    answered: bool = False  # set by the worker when it settles the future


class _Stop:
    """Queue sentinel: the worker exits when it reads this."""


class EngineClosed(ServiceUnavailable):
    """The engine was closed; it accepts no more requests."""

    default_code = "engine_closed"


class MicroBatcher:
    """Runs ``encoder`` on a dedicated daemon thread, merging queued requests into batches.

    One forward pass holds at most ``max_batch_size`` inputs and
    ``max_batch_tokens`` padded tokens (inputs x longest input). A group of
    requests that needs several passes is run shortest inputs first, and each
    request is answered as soon as its own vectors are ready.
    """

    def __init__(
        self,
        encoder: BatchEncoder,
        *,
        max_batch_size: int = 64,
        max_batch_tokens: int = 8192,
        name: str = "embedding-worker",
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("max_batch_size and max_batch_tokens must be at least 1")
        self._encoder = encoder
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit() against shutdown()'s sentinel
        self._closed = False
        self._forward_passes = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far (fewer than requests when batching merged some)."""
        return self._forward_passes

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(
        self,
        inputs: Sequence[EncoderInput],
        loop: asyncio.AbstractEventLoop,
        *,
        framed: bool = False,
    ) -> asyncio.Future[EmbeddingResult]:
        """Queue ``inputs``; the returned future (bound to ``loop``) gets their vectors.

        ``framed``: the inputs are already the id sequences the model is fed
        (special tokens added, truncated), so the worker does not tokenize them.
        """
        future: asyncio.Future[EmbeddingResult] = loop.create_future()
        with self._lock:
            if self._closed:
                raise EngineClosed(
                    "The embedding engine has been shut down and accepts no more requests; "
                    "retry on a running server."
                )
            self._queue.put(_Job(inputs, loop, future, framed))
        return future

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish the requests already queued, then stop the thread. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_Stop())
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._encoder.attach_thread()
        except Exception:
            logger.exception("embedding worker could not prepare its thread")
        carry: _Job | _Stop | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if isinstance(first, _Stop):
                return
            jobs, carry = self._drain(first)
            self._process(jobs)

    def _drain(self, first: _Job) -> tuple[list[_Job], _Job | _Stop | None]:
        """``first`` plus whatever is queued that fits the batch; the item that did not fit."""
        jobs, size = [first], len(first.inputs)
        while size < self._max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return jobs, None
            if isinstance(item, _Stop) or size + len(item.inputs) > self._max_batch_size:
                return jobs, item
            jobs.append(item)
            size += len(item.inputs)
        return jobs, None

    def _process(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.future.cancelled()]
        if not live:
            return
        try:
            self._run_batch(live)
        except Exception as exc:
            unanswered = [job for job in live if not job.answered]
            if len(unanswered) > 1:  # isolate the request that broke the batch
                for job in unanswered:
                    self._process([job])
                return
            logger.exception("embedding forward pass failed")
            for job in unanswered:
                _settle(job, None, exc)

    def _run_batch(self, jobs: list[_Job]) -> None:
        """Tokenize ``jobs`` together, run the passes, answer each job when it is complete."""
        owner = [k for k, job in enumerate(jobs) for _ in job.inputs]
        starts = [0]
        for job in jobs:
            starts.append(starts[-1] + len(job.inputs))
        raw = [item for job in jobs if not job.framed for item in job.inputs]
        tokenized = iter(self._encoder.tokenize(raw) if raw else [])
        sequences: list[list[int]] = []
        for job in jobs:
            for item in job.inputs:
                framed = job.framed and not isinstance(item, str)
                sequences.append([int(t) for t in item] if framed else next(tokenized))
        vectors: list[list[float]] = [[] for _ in sequences]
        missing = [len(job.inputs) for job in jobs]
        for chunk in self._chunks(sequences):
            encoded = self._encoder.encode([sequences[i] for i in chunk])
            self._forward_passes += 1
            for i, vector in zip(chunk, encoded, strict=True):
                vectors[i] = vector
                k = owner[i]
                missing[k] -= 1
                if missing[k] == 0:
                    lo, hi = starts[k], starts[k + 1]
                    tokens = sum(len(seq) for seq in sequences[lo:hi])
                    _settle(jobs[k], EmbeddingResult(vectors[lo:hi], tokens), None)

    def _chunks(self, sequences: list[list[int]]) -> list[list[int]]:
        """Indices of ``sequences`` grouped into passes, shortest first (least padding)."""
        chunks: list[list[int]] = []
        chunk: list[int] = []
        for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])):
            width = len(sequences[i])  # the longest so far, as the order is ascending
            full = len(chunk) >= self._max_batch_size
            if chunk and (full or (len(chunk) + 1) * width > self._max_batch_tokens):
                chunks.append(chunk)
                chunk = []
            chunk.append(i)
        if chunk:
            chunks.append(chunk)
        return chunks


def _settle(job: _Job, result: EmbeddingResult | None, error: BaseException | None) -> None:
    """Resolve ``job``'s future on its own loop (futures are not thread-safe)."""
    job.answered = True

    def resolve() -> None:
        if job.future.done():  # the caller gave up (cancelled) meanwhile
            return
        if error is not None:
            job.future.set_exception(error)
        elif result is not None:
            job.future.set_result(result)

    # RuntimeError: the caller's loop is closed, so nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(resolve)
