"""Runs batch inference jobs: every line through the serverless path, at batch priority.

Each replica runs a loop that claims waiting jobs (or jobs whose replica's
lease ran out) up to ``max_jobs``, and runs their lines with at most
``concurrency`` requests in flight across all of them. A line runs through
``InferenceService.generate(..., batch=True)``: the same validation, engine,
spend reservation and metering as an interactive request, but metered as
kind ``batch`` (the price book's batch share), outside the rate limit, and
started only in a lull of interactive traffic (``inference/priority.py``).

Each finished line is a row of ``batch_results`` (its output line), and its
usage record is keyed ``batch-{uid}-{line}``: a job taken over after a crash
runs only the lines without a row, and a line that ran twice is billed once.
When every line has a result the output is written in input order (a
dataset for a Fireworks job; output and error files for an OpenAI batch).
A job refused for money (a 402 from the spend guard or a suspension) stops
and fails with that error's code; what it finished is still written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, BinaryIO

import anyio
from anyio import to_thread
from sqlalchemy import or_, update

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.clock import Clock
from firebox.errors import FireboxError, PaymentRequired, RateLimited
from firebox.finetune import batch_repository as repo
from firebox.finetune.batch_files import BatchFileService
from firebox.finetune.batch_lines import error_line, parameters, parse_line, result_line
from firebox.finetune.batch_models import BatchJobRow, JobState
from firebox.finetune.batch_output import BatchOutput
from firebox.finetune.batch_service import BatchDatasets
from firebox.inference.serving import Answer, InferenceService
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database

log = logging.getLogger("firebox.batch")

READ_LINES = 256  # input lines read per trip to a worker thread
STOP_CHECK_S = 0.5  # how often a job waiting for a lull looks whether it was cancelled
RETRY_RESERVED_S = 1.0  # a line refused only by reservations in flight waits this long


@dataclass
class _Job:
    """A job this replica runs, and what its heartbeat learned about it."""

    row: BatchJobRow
    stop: str | None = None  # "cancelled" | "deleted" | "failed" | "expired": it must stop
    failure: FireboxError | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class BatchRunner:
    """The job loop of one replica (started by the app's lifespan)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        blobs: BlobStore,
        inference: InferenceService,
        files: BatchFileService,
        datasets: Callable[[], BatchDatasets],
        *,
        concurrency: int = 4,
        max_jobs: int = 2,
        lull_max_wait_s: float = 30.0,
        poll_s: float = 2.0,
        lease_s: float = 60.0,
        background: bool = True,
    ) -> None:
        self._db = db
        self._clock = clock
        self._blobs = blobs
        self._inference = inference
        self._files = files
        self._datasets = datasets
        self._concurrency = concurrency
        self._max_jobs = max_jobs
        self._lull_max_wait_s = lull_max_wait_s
        self._poll_s = poll_s
        self._lease = timedelta(seconds=lease_s)
        self._background = background  # the engine pauses lines beside interactive requests
        self.owner = f"replica-{uuid.uuid4().hex[:12]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._jobs: dict[int, _Job] = {}
        self._slots: asyncio.Semaphore | None = None
        self._output = BatchOutput(db, clock, blobs, files, datasets)
        self.lines_run = 0  # lines this replica ran (tests, benchmarks)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """On the event loop: start looking for jobs."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self._concurrency)
        self._main = self._loop.create_task(self._run_forever())

    def wake(self) -> None:
        """Any thread: a job may be waiting (created or cancelled); look now."""
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
            loop.call_soon_threadsafe(event.set)

    async def aclose(self) -> None:
        """Stop: lines in flight are cancelled (billed for what they made); leases released."""
        if self._main is None:
            return
        self._main.cancel()
        pks = list(self._jobs)
        tasks = [t for job in self._jobs.values() for t in job.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(self._main, *tasks, return_exceptions=True)
        self._jobs.clear()
        if pks:
            await to_thread.run_sync(self._release, pks)
        self._main = None

    def running(self) -> list[int]:
        return list(self._jobs)

    # -- the loop --------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            try:
                free = self._max_jobs - len(self._jobs)
                if free > 0:
                    for row in await to_thread.run_sync(self._claim, free):
                        job = _Job(row)
                        self._jobs[row.pk] = job
                        task = asyncio.get_running_loop().create_task(self._run_job(job))
                        job.tasks.add(task)
            except Exception:
                log.exception("looking for batch jobs failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_s)
            self._wakeup.clear()

    def _claim(self, limit: int) -> list[BatchJobRow]:
        """Take up to ``limit`` runnable jobs: one conditional update each, so one replica wins."""
        now = self._clock.now()
        claimed = []
        with self._db.transaction() as session:
            candidates = repo.runnable(session, now, list(self._jobs), limit)
        for pk in candidates:
            with self._db.transaction() as session:
                result = session.execute(
                    update(BatchJobRow)
                    .where(
                        BatchJobRow.pk == pk,
                        or_(BatchJobRow.lease_until.is_(None), BatchJobRow.lease_until < now),
                    )
                    .values(lease_owner=self.owner, lease_until=now + self._lease)
                )
                if getattr(result, "rowcount", 0) != 1:
                    continue
                row = repo.job_by_pk(session, pk)
                if row is None:
                    continue
                if row.state == JobState.PENDING.value:
                    row.state = JobState.RUNNING.value
                    row.start_time = now
                    row.update_time = now
                session.flush()
                session.expunge(row)
                claimed.append(row)
        return claimed

    def _release(self, pks: list[int]) -> None:
        with self._db.transaction() as session:
            session.execute(
                update(BatchJobRow)
                .where(BatchJobRow.pk.in_(pks), BatchJobRow.lease_owner == self.owner)
                .values(lease_owner="", lease_until=None)
            )

    # -- one job ---------------------------------------------------------------------------

    async def _run_job(self, job: _Job) -> None:
        pk = job.row.pk
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job))
        job.tasks.add(heartbeat)
        try:
            if job.row.state == JobState.CANCELLING.value:
                job.stop = "cancelled"  # cancelled before it ran: write what there is
            if job.row.state != JobState.WRITING_RESULTS.value:
                await self._run_lines(job)
            if job.stop == "deleted":
                return
            await to_thread.run_sync(self._output.finish, job.row.pk, job.stop, job.failure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch job %s failed", pk)
            error = exc if isinstance(exc, FireboxError) else None
            await to_thread.run_sync(self._output.fail, pk, error)
        finally:
            heartbeat.cancel()
            self._jobs.pop(pk, None)
            self.wake()  # a slot is free: look for the next job

    async def _run_lines(self, job: _Job) -> None:
        row = job.row
        if row.total == 0:
            total = await to_thread.run_sync(self._count_lines, row.input_keys)
            await to_thread.run_sync(self._set_total, row.pk, total)
            row.total = total
        done = await to_thread.run_sync(self._done, row.pk)
        principal = Principal(
            account_id=row.account_id,
            user_id=row.created_by or "batch",
            user_pk=0,
            role=Role.USER,
            key_id=f"batch-job:{row.job_id}",
            key_hash="",
        )
        defaults = parameters(row.parameters)
        assert self._slots is not None
        slots = self._slots
        inflight: set[asyncio.Task[None]] = set()
        async with contextlib.aclosing(self._lines(row.input_keys)) as lines:
            async for index, raw in lines:
                if index in done:
                    continue
                if job.stop is not None:
                    break
                await slots.acquire()
                # After the slot: a line that waited for one must still find a lull to start.
                await self._lull(job)
                if job.stop is not None:
                    slots.release()
                    break
                task = asyncio.get_running_loop().create_task(
                    self._line(job, principal, defaults, index, raw)
                )
                task.add_done_callback(lambda _: slots.release())
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                job.tasks.add(task)
                task.add_done_callback(job.tasks.discard)
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _lull(self, job: _Job) -> None:
        """Wait for a lull in interactive traffic (at most the bound), or for the job to stop."""
        deadline = time.monotonic() + self._lull_max_wait_s
        while job.stop is None:
            left = deadline - time.monotonic()
            if left <= 0 or await self._inference.traffic.lull(min(left, STOP_CHECK_S)):
                return

    async def _line(
        self, job: _Job, principal: Principal, defaults: dict[str, Any], index: int, raw: bytes
    ) -> None:
        row = job.row
        request_id = f"batch-{row.uid}-{index}"
        line = parse_line(index, raw, defaults, row.model)
        tokens = (0, 0, 0)
        if line.problem is not None or line.request is None:
            assert line.problem is not None
            ok, output = False, error_line(request_id, line.custom_id, line.problem)
        else:
            while True:
                try:
                    answer = await self._inference.generate(
                        principal, line.request, request_id, batch=True, background=self._background
                    )
                    assert isinstance(answer, Answer)  # a batch line never streams
                    ok, output = True, result_line(request_id, line.custom_id, answer.body)
                    tokens = _tokens(answer.body)
                except RateLimited as exc:
                    if exc.code != "spend_reserved" or job.stop is not None:
                        ok, output = False, error_line(request_id, line.custom_id, exc)
                        break
                    await anyio.sleep(RETRY_RESERVED_S)  # reservations in flight: soon settled
                    continue
                except PaymentRequired as exc:  # out of money or suspended: the job stops
                    job.stop, job.failure = "failed", exc
                    return
                except FireboxError as exc:
                    ok, output = False, error_line(request_id, line.custom_id, exc)
                except Exception as exc:
                    log.exception("batch line %s failed", request_id)
                    error = FireboxError(f"The line failed: {type(exc).__name__}.")
                    ok, output = False, error_line(request_id, line.custom_id, error)
                break
        self.lines_run += 1
        await to_thread.run_sync(self._record, job, index, ok, output, tokens)

    async def _heartbeat(self, job: _Job) -> None:
        """Renew the lease and notice a cancel or a delete, a few times per lease."""
        interval = max(min(self._lease.total_seconds() / 4, self._poll_s), 0.05)
        while True:
            await anyio.sleep(interval)
            await to_thread.run_sync(self._renew, job)

    # -- reads and writes (worker threads) -------------------------------------------------

    def _renew(self, job: _Job) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            row = repo.job_by_pk(session, job.row.pk)
            if row is None:
                job.stop = "deleted"
                return
            if row.state == JobState.CANCELLING.value and job.stop is None:
                job.stop = "cancelled"
            if row.expire_time is not None and now >= row.expire_time and job.stop is None:
                job.stop = "expired"  # OpenAI's 24 h window: what ran is kept
            row.lease_owner = self.owner
            row.lease_until = now + self._lease

    def _record(
        self, job: _Job, index: int, ok: bool, output: str, tokens: tuple[int, int, int]
    ) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            row = repo.job_by_pk(session, job.row.pk)
            if row is None:
                job.stop = "deleted"
                return
            if repo.add_result(session, row.pk, index, ok, output):
                prompt, completion, cached = tokens
                repo.bump(
                    session,
                    row.pk,
                    ok=ok,
                    input_tokens=prompt,
                    output_tokens=completion,
                    cached_tokens=cached,
                    now=now,
                )
            if row.state == JobState.CANCELLING.value and job.stop is None:
                job.stop = "cancelled"

    def _done(self, pk: int) -> set[int]:
        with self._db.transaction() as session:
            return repo.done_lines(session, pk)

    def _set_total(self, pk: int, total: int) -> None:
        with self._db.transaction() as session:
            row = repo.job_by_pk(session, pk)
            if row is not None:
                row.total = total

    def _count_lines(self, keys: list[str]) -> int:
        count = 0
        for key in keys:
            with self._blobs.open(key) as handle:
                count += sum(1 for line in handle if line.strip())
        return count

    async def _lines(self, keys: list[str]) -> AsyncGenerator[tuple[int, bytes], None]:
        """Every non-blank input line with its index, read a few hundred at a time."""
        index = 0
        for key in keys:
            handle = await to_thread.run_sync(self._blobs.open, key)
            try:
                while chunk := await to_thread.run_sync(_read_lines, handle, READ_LINES):
                    for raw in chunk:
                        yield index, raw
                        index += 1
            finally:
                handle.close()


def _read_lines(handle: BinaryIO, limit: int) -> list[bytes]:
    lines: list[bytes] = []
    while len(lines) < limit:
        raw = handle.readline()
        if not raw:
            break
        stripped = raw.rstrip(b"\r\n")
        if stripped.strip():
            lines.append(stripped)
    return lines


def _tokens(body: dict[str, Any]) -> tuple[int, int, int]:
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )
