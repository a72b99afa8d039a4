"""The job runner: trains fine-tuning jobs in worker processes, a bounded number per node.

One runner per server process, on its event loop. Every ``poll_s`` (or when
woken: a job created, cancelled or resumed, a suspension flipped) it

1. renews the leases of the jobs it trains and passes on what changed in the
   database: a job set to ``CANCELLING`` is asked to cancel, a job whose
   account got suspended to pause (``JOB_STATE_PAUSED``);
2. puts jobs paused by a suspension that has lifted back to ``PENDING``;
3. claims waiting jobs (and jobs whose runner's lease ran out: a server that
   died) while it trains fewer than ``max_jobs``, and starts a worker process
   for each (``python -m firebox.finetune.worker``, torch on ``threads``
   threads), so training never shares the gateway's interpreter.

Each worker resumes from its job's last checkpoint, if any. Its events move
the job's progress; each checkpoint charges the tokens trained since the
last charge (``sft_money``). A worker whose runner goes away (stdin closes)
checkpoints and exits; a clean shutdown asks every worker to pause and puts
their jobs back to ``PENDING``, so the next start continues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from anyio import to_thread

from firebox.clock import Clock
from firebox.errors import FireboxError, PaymentRequired
from firebox.finetune import sft_repository as repo
from firebox.finetune.sft_charges import JobCharges, RunningJob
from firebox.finetune.sft_inputs import DatasetSource, TrainableBases
from firebox.finetune.sft_models import JobState, PauseReason, SftJobRow
from firebox.finetune.sft_money import NoRoomYet, TrainingMoney
from firebox.finetune.sft_output import OutputPublisher
from firebox.finetune.worker.protocol import (
    DEFAULT_TARGETS,
    Command,
    Event,
    TrainSpec,
    command_line,
    read_position,
)
from firebox.limits.admission import suspended
from firebox.store.database import Database

log = logging.getLogger(__name__)

_TERMINAL = frozenset({"completed", "paused", "cancelled", "failed"})


@dataclass(frozen=True)
class RunnerSettings:
    work_dir: Path  # one folder per job: spec, checkpoints, the adapter, the worker's log
    max_jobs: int = 1
    lease_s: float = 30.0
    poll_s: float = 1.0
    threads: int = 1
    device: str = "auto"
    nice: int = 10
    python: str = sys.executable


class SftRunner:
    """Runs this node's share of the fine-tuning jobs."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        datasets: DatasetSource,
        bases: TrainableBases,
        money: TrainingMoney,
        publisher: OutputPublisher,
        settings: RunnerSettings,
    ) -> None:
        self._db = db
        self._clock = clock
        self._datasets = datasets
        self._bases = bases
        self._money = money
        self._publisher = publisher
        self._charges = JobCharges(db, clock, money, bases)
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._jobs: dict[int, RunningJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """On the app's event loop: start the loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._main())

    def wake(self) -> None:
        """Any thread: look at the jobs now rather than at the next poll."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not self._closing:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def suspension_changed(
        self, account_id: str, suspended: bool, reasons: tuple[str, ...]
    ) -> None:
        """A ``SuspensionHooks`` callback: pause or resume that account's jobs soon."""
        self.wake()

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def aclose(self, timeout_s: float = 60.0) -> None:
        """Pause every worker (each checkpoints), put its job back to PENDING, stop the loop."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        jobs = list(self._jobs.values())
        for job in jobs:
            if job.stop is None:
                job.stop = "shutdown"
            await self._send(job, "cancel" if job.stop == "cancel" else "pause")
        tasks = [job.task for job in jobs if job.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
            for job in jobs:
                if job.task in late:
                    log.error("worker of job %s did not stop in time; killing it", job.uid)
                    with contextlib.suppress(ProcessLookupError):
                        job.process.kill()
            if late:
                await asyncio.wait(late, timeout=10)

    async def _main(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fine-tuning runner tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)
            self._wake.clear()

    async def _tick(self) -> None:
        await self._supervise()
        await self._unpause()
        now = self._clock.now()
        await self._db_call(repo.promote_created, now)
        free = self.settings.max_jobs - len(self._jobs)
        if free <= 0:
            return
        candidates = await self._db_call(repo.claimable, now, free * 4)
        for pk in candidates:
            if free <= 0 or self._closing:
                return
            until = now + timedelta(seconds=self.settings.lease_s)
            claimed = await self._db_call(repo.claim, pk, self.owner, until, now)
            if claimed and await self._start(pk):
                free -= 1

    # -- database --------------------------------------------------------------------

    async def _db_call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with self._db.transaction() as session:
                return function(session, *args, **kwargs)

        return await to_thread.run_sync(run)

    async def _set(self, pk: int, **values: Any) -> bool:
        values.setdefault("update_time", self._clock.now())
        return bool(await self._db_call(repo.set_fields, pk, self.owner, **values))

    async def _release(self, pk: int, **values: Any) -> None:
        """Change the job and give up its lease."""
        await self._set(pk, **values, lease_owner=None, lease_until=None)

    # -- supervising -------------------------------------------------------------------

    async def _supervise(self) -> None:
        if not self._jobs:
            return
        pks = list(self._jobs)
        until = self._clock.now() + timedelta(seconds=self.settings.lease_s)
        await self._db_call(repo.renew, pks, self.owner, until)
        states = await self._db_call(repo.states, pks)
        for pk in pks:
            job = self._jobs.get(pk)
            if job is None or job.stop == "cancel":
                continue
            state = states.get(pk, (None, ""))[0]
            if state is None or state == JobState.CANCELLING.value:
                job.stop = "cancel"  # cancelled (or deleted) through the API
                await self._send(job, "cancel")
            elif job.stop is None:
                reasons = await self._money.reasons(job.account_id)
                if reasons:
                    error = suspended(job.account_id, reasons[0])
                    job.stop, job.stop_status = "suspended", (error.code, error.message)
                    await self._send(job, "pause")

    async def _unpause(self) -> None:
        for pk, account_id in await self._db_call(repo.paused_for_suspension):
            if not await self._money.reasons(account_id):
                values = {"state": JobState.PENDING.value, "pause_reason": None}
                await self._db_call(
                    repo.set_fields,
                    pk,
                    None,
                    **values,
                    status_code="OK",
                    status_message="",
                    update_time=self._clock.now(),
                )

    async def _send(self, job: RunningJob, command: Command) -> None:
        stdin = job.process.stdin
        if stdin is None or stdin.is_closing():
            return
        try:
            stdin.write(command_line(command))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker is gone; its watcher sees it end

    # -- starting ----------------------------------------------------------------------

    async def _start(self, pk: int) -> bool:
        """Start the worker of claimed job ``pk``; False if the job did not start."""
        row: SftJobRow | None = await self._db_call(repo.by_pk, pk)
        if row is None:
            return False
        folder = self.settings.work_dir / row.uid
        if row.state == JobState.CANCELLING.value:  # its runner died while cancelling
            await self._charges.catch_up(row, folder)
            await self._release(
                pk, state=JobState.CANCELLED.value, completed_time=self._clock.now()
            )
            return False
        reasons = await self._money.reasons(row.account_id)
        if reasons:
            error = suspended(row.account_id, reasons[0])
            await self._release(
                pk,
                state=JobState.PAUSED.value,
                pause_reason=PauseReason.SUSPENDED.value,
                status_code=error.code,
                status_message=error.message,
            )
            return False
        try:
            data = await to_thread.run_sync(
                self._datasets.training_data, row.account_id, row.dataset
            )
            evaluation = None
            if row.evaluation_dataset:
                evaluation = await to_thread.run_sync(
                    self._datasets.training_data, row.account_id, row.evaluation_dataset
                )
            base = self._bases.find(
                row.account_id,
                None if row.warm_start_from else row.base_model,
                row.warm_start_from,
            )
        except FireboxError as exc:
            await self._fail(pk, exc.code, exc.message)
            return False
        billed = await self._charges.catch_up(row, folder)
        estimated = max(data.token_count * row.epochs - billed, 0)
        try:
            hold = await self._money.hold(
                row.account_id,
                self._charges.cost(row.account_id, row.output_model, base, estimated),
            )
        except NoRoomYet:
            await self._release(pk)  # requests in flight hold the room: try again soon
            return False
        except PaymentRequired as exc:
            await self._fail(pk, exc.code, exc.message)
            return False
        targets = list(base.target_modules or DEFAULT_TARGETS)
        spec = TrainSpec(
            job=row.uid,
            base_model_path=str(base.path),
            train_files=[str(p) for p in data.paths],
            output_dir=str(folder / "adapter"),
            checkpoint_dir=str(folder / "checkpoints"),
            base_model_name=base.name,
            format="COMPLETION" if data.format == "COMPLETION" else "CHAT",
            eval_files=[str(p) for p in evaluation.paths] if evaluation else [],
            eval_carveout=row.eval_auto_carveout,
            epochs=row.epochs,
            learning_rate=row.learning_rate,
            warmup_steps=row.warmup_steps,
            lora_rank=row.lora_rank,
            max_context_length=row.max_context_length,
            batch_size_tokens=row.batch_size,
            batch_size_samples=row.batch_size_samples,
            warm_start_adapter=str(base.warm_start_path) if base.warm_start_path else None,
            target_modules=targets,
            threads=self.settings.threads,
            device=self.settings.device,
            nice=self.settings.nice,
        )
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
        spec.write(spec_path)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.settings.threads)}
        with (folder / "worker.log").open("ab") as worker_log:
            process = await asyncio.create_subprocess_exec(
                self.settings.python,
                "-m",
                "firebox.finetune.worker",
                str(spec_path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=worker_log,
                env=env,
            )
        job = RunningJob(
            pk=pk,
            account_id=row.account_id,
            uid=row.uid,
            output_model=row.output_model,
            base=base,
            epochs=row.epochs,
            lora_rank=row.lora_rank,
            target_modules=targets,
            display_name=row.display_name,
            billed=billed,
            estimated_per_epoch=data.token_count,
            process=process,
            hold=hold,
        )
        self._jobs[pk] = job
        await self._set(
            pk,
            state=JobState.RUNNING.value,
            status_code="OK",
            status_message="",
            start_time=row.start_time or self._clock.now(),
        )
        job.task = asyncio.get_running_loop().create_task(self._watch(job))
        return True

    async def _fail(self, pk: int, code: str, message: str) -> None:
        await self._release(
            pk,
            state=JobState.FAILED.value,
            status_code=code,
            status_message=message[:2000],
            completed_time=self._clock.now(),
        )

    # -- watching a worker ---------------------------------------------------------------

    async def _watch(self, job: RunningJob) -> None:
        ended: Event | None = None
        stdout = job.process.stdout
        assert stdout is not None
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                event = Event.parse(line.decode(errors="replace"))
                if event is None:
                    continue
                try:
                    await self._on_event(job, event)
                except Exception:
                    log.exception("handling %s of job %s failed", event.event, job.uid)
                if event.event in _TERMINAL:
                    ended = event
            code = await job.process.wait()
            if ended is None:
                await self._catch_up_job(job)
                await self._fail(
                    job.pk,
                    "training_failed",
                    f"The training worker exited with code {code}; see its log. "
                    "Resume the job to continue from its last checkpoint.",
                )
        finally:
            await self._money.release(job.hold)
            job.hold = None
            self._jobs.pop(job.pk, None)
            self.wake()

    async def _catch_up_job(self, job: RunningJob) -> None:
        found = read_position(self.settings.work_dir / job.uid / "checkpoints")
        if found is not None:
            await self._charges.charge(job, found[0].trained_tokens, hold_rest=False)

    async def _on_event(self, job: RunningJob, event: Event) -> None:
        progress: dict[str, Any] = {
            "epoch": event.epoch,
            "step": event.step,
            "total_steps": event.total_steps,
            "trained_tokens": event.trained_tokens,
        }
        if event.dataset_tokens:
            progress["dataset_tokens"] = event.dataset_tokens
            job.estimated_per_epoch = event.dataset_tokens
        if event.loss is not None:
            progress["loss"] = event.loss
        if event.eval_loss is not None:
            progress["eval_loss"] = event.eval_loss
        if event.tokens_per_second is not None:
            progress["tokens_per_second"] = event.tokens_per_second
        kind = event.event
        if kind == "started" and event.step > 0:
            progress["status_message"] = (
                f"Resumed from the checkpoint at step {event.step} (epoch {event.epoch})."
            )
        if kind in ("started", "progress"):
            await self._set(job.pk, **progress)
        elif kind == "checkpoint":
            if await self._charges.charge(job, event.trained_tokens, hold_rest=True):
                await self._send(job, "pause")  # its next hold was refused: it pauses
            await self._set(job.pk, **progress)
        elif kind == "completed":
            await self._charges.charge(job, event.trained_tokens, hold_rest=False)
            await self._complete(job, progress)
        elif kind in ("paused", "cancelled"):
            await self._charges.charge(job, event.trained_tokens, hold_rest=False)
            await self._stopped(job, progress)
        elif kind == "failed":
            await self._catch_up_job(job)
            await self._fail(job.pk, "training_failed", f"Training failed: {event.message}")

    async def _complete(self, job: RunningJob, progress: dict[str, Any]) -> None:
        folder = self.settings.work_dir / job.uid
        try:
            await self._publisher.publish(
                job.output_model,
                folder / "adapter",
                job.base.name,
                job.lora_rank,
                job.target_modules,
                job.display_name,
            )
        except FireboxError as exc:
            await self._set(job.pk, **progress)
            await self._fail(job.pk, exc.code, f"The output model was not created: {exc.message}")
            return
        await self._release(
            job.pk, **progress, state=JobState.COMPLETED.value, completed_time=self._clock.now()
        )
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)

    async def _stopped(self, job: RunningJob, progress: dict[str, Any]) -> None:
        now = self._clock.now()
        if job.stop == "cancel":
            await self._release(
                job.pk, **progress, state=JobState.CANCELLED.value, completed_time=now
            )
        elif job.stop in ("suspended", "spend"):
            code, message = job.stop_status or ("paused", "")
            reason = PauseReason.SUSPENDED.value if job.stop == "suspended" else None
            await self._release(
                job.pk,
                **progress,
                state=JobState.PAUSED.value,
                pause_reason=reason,
                status_code=code,
                status_message=message,
            )
        else:  # shutting down, or the runner's pipe broke: the next runner continues it
            await self._release(job.pk, **progress, state=JobState.PENDING.value)
