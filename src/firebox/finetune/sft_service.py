"""Supervised fine-tuning jobs: create, read, list, delete, cancel, resume.

Creating a job checks everything that can be checked before training: the
dataset is READY, the base model has local weights, the output model's name
is free, and the account's money can pay for dataset tokens x epochs (the
same 402 codes as inference). The job starts in ``JOB_STATE_CREATING``; the
runner (``sft_runner``) takes it from there. Cancelling a running job asks
its worker to stop (``JOB_STATE_CANCELLING``), which charges what it trained
and keeps its checkpoint, so ``:resume`` continues from there.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

from anyio import to_thread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.ids import validate_id
from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.catalog.kinds import model_name, split_name
from firebox.clock import Clock
from firebox.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from firebox.finetune import sft_repository as repo
from firebox.finetune.sft_inputs import DatasetSource, TrainableBases
from firebox.finetune.sft_models import FINAL, JobState, SftJobRow, job_name
from firebox.finetune.sft_money import TrainingMoney
from firebox.finetune.sft_schemas import SftJob, SftJobCreate, SftJobList
from firebox.paging import decode_token, next_token, page_size
from firebox.store.database import Database
from firebox.store.locking import lock_rows

DEFAULT_BATCH_TOKENS = 8192


def job_not_found(account_id: str, job_id: str) -> NotFound:
    return NotFound(
        f"Fine-tuning job {job_name(account_id, job_id)!r} was not found.", code="job_not_found"
    )


class SftJobService:
    """The rules of the ``supervisedFineTuningJobs`` resource."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        datasets: DatasetSource,
        bases: TrainableBases,
        money: TrainingMoney,
        model_exists: Callable[[str, str], bool],
    ) -> None:
        self._db = db
        self._clock = clock
        self._datasets = datasets
        self._bases = bases
        self._money = money
        self._model_exists = model_exists  # (account_id, full name) -> bool
        self.on_change: Callable[[], None] = lambda: None  # the runner's wake-up

    # -- create ------------------------------------------------------------------

    async def create(
        self, principal: Principal, account_id: str, job_id: str | None, body: SftJobCreate
    ) -> SftJob:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        job_id = validate_id(job_id, "job", "supervisedFineTuningJobId") if job_id else None
        job_id = job_id or f"sftj-{secrets.token_hex(4)}"
        data = await to_thread.run_sync(self._datasets.training_data, account_id, body.dataset)
        evaluation = None
        if body.evaluation_dataset:
            evaluation = await to_thread.run_sync(
                self._datasets.training_data, account_id, body.evaluation_dataset
            )
        base = self._bases.find(account_id, body.base_model, body.warm_start_from)
        context = body.max_context_length or base.context_length
        if context > base.context_length:
            raise InvalidArgument(
                f"maxContextLength {context} is more than {base.name!r}'s context length "
                f"({base.context_length}).",
                param="maxContextLength",
            )
        output = self._output_name(account_id, body.output_model or job_id)
        tokens = data.token_count * body.epochs
        now = self._clock.now()
        estimate = self._money.record(
            request_id="estimate",
            account_id=account_id,
            model=output,
            base_model=base.name,
            price_class=base.price_class,
            tokens=tokens,
            at=now,
        ).micros
        await self._money.check(account_id, estimate)
        rank = body.lora_rank
        if base.warm_start_rank is not None:
            rank = base.warm_start_rank  # continuing an add-on keeps its shape
        row = SftJobRow(
            account_id=account_id,
            job_id=job_id,
            uid=uuid.uuid4().hex,
            display_name=body.display_name,
            created_by=principal.user_id,
            state=JobState.CREATING.value,
            status_code="OK",
            status_message="",
            dataset=data.name,
            evaluation_dataset=evaluation.name if evaluation else None,
            eval_auto_carveout=body.eval_auto_carveout,
            base_model=base.name,
            warm_start_from=body.warm_start_from,
            output_model=output,
            epochs=body.epochs,
            learning_rate=body.learning_rate,
            warmup_steps=body.learning_rate_warmup_steps,
            lora_rank=rank,
            max_context_length=context,
            batch_size=body.batch_size or DEFAULT_BATCH_TOKENS,
            batch_size_samples=body.batch_size_samples,
            estimated_tokens=tokens,
            estimated_cost_micros=estimate,
            dataset_tokens=data.token_count,
            epoch=0,
            step=0,
            total_steps=0,
            trained_tokens=0,
            billed_tokens=0,
            billed_micros=0,
            create_time=now,
            update_time=now,
        )
        view = await to_thread.run_sync(self._insert, row)
        self.on_change()
        return view

    def _insert(self, row: SftJobRow) -> SftJob:
        try:
            return self._insert_once(row)
        except IntegrityError:  # a concurrent create of the same id won
            raise AlreadyExists(
                f"Fine-tuning job {job_name(row.account_id, row.job_id)!r} already exists."
            ) from None

    def _insert_once(self, row: SftJobRow) -> SftJob:
        with self._db.transaction() as session:
            # Creates of one account queue here, so the checks below hold until the commit.
            lock_rows(session, AccountRow, AccountRow.id == row.account_id)
            if accounts_repo.get_account(session, row.account_id) is None:
                raise NotFound(f"Account {row.account_id!r} was not found.")
            if repo.get(session, row.account_id, row.job_id) is not None:
                raise AlreadyExists(
                    f"Fine-tuning job {job_name(row.account_id, row.job_id)!r} already exists."
                )
            if repo.output_taken(session, row.account_id, row.output_model, None):
                raise AlreadyExists(
                    f"Another fine-tuning job already writes {row.output_model!r}; choose "
                    "another outputModel.",
                    code="output_model_taken",
                )
            session.add(row)
            session.flush()
            return SftJob.of(row)

    def _output_name(self, account_id: str, output: str) -> str:
        parts = split_name(output) if "/" in output else (account_id, output)
        if parts is None or parts[0] != account_id:
            raise InvalidArgument(
                f"outputModel {output!r} must be a model id, or a model name in account "
                f"{account_id!r}.",
                param="outputModel",
            )
        validate_id(parts[1], "model", "outputModel")
        name = model_name(*parts)
        if self._model_exists(account_id, name):
            raise AlreadyExists(
                f"Model {name!r} already exists; choose another outputModel.",
                code="output_model_exists",
            )
        return name

    # -- read --------------------------------------------------------------------

    def get(self, principal: Principal, account_id: str, job_id: str) -> SftJob:
        principal.require(account_id, Permission.RESOURCES_READ)
        with self._db.transaction() as session:
            return SftJob.of(self._found(session, account_id, job_id))

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> SftJobList:
        principal.require(account_id, Permission.RESOURCES_READ)
        limit = page_size(size)
        after = decode_token(token)
        with self._db.transaction() as session:
            rows = repo.page(session, account_id, after, limit)
            return SftJobList(
                supervised_fine_tuning_jobs=[SftJob.of(r) for r in rows],
                next_page_token=next_token([r.job_id for r in rows], limit),
                total_size=repo.count(session, account_id),
            )

    # -- change ------------------------------------------------------------------

    def delete(self, principal: Principal, account_id: str, job_id: str) -> None:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        with self._db.transaction() as session:
            row = self._found(session, account_id, job_id, lock=True)
            if row.state in (JobState.RUNNING.value, JobState.CANCELLING.value):
                raise FailedPrecondition(
                    f"Job {job_name(account_id, job_id)!r} is running; cancel it first "
                    f"(POST .../supervisedFineTuningJobs/{job_id}:cancel).",
                    code="job_running",
                )
            session.delete(row)

    def cancel(self, principal: Principal, account_id: str, job_id: str) -> SftJob:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        with self._db.transaction() as session:
            row = self._found(session, account_id, job_id, lock=True)
            state = JobState(row.state)
            if state in FINAL:
                raise FailedPrecondition(
                    f"Job {job_name(account_id, job_id)!r} is already {state.value}.",
                    code="job_finished",
                )
            now = self._clock.now()
            if state in (JobState.RUNNING, JobState.CANCELLING):
                row.state = JobState.CANCELLING.value
            else:
                row.state = JobState.CANCELLED.value
                row.completed_time = now
                row.lease_owner = row.lease_until = None
            row.pause_reason = None
            row.update_time = now
            view = SftJob.of(row)
        self.on_change()
        return view

    async def resume(self, principal: Principal, account_id: str, job_id: str) -> SftJob:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        await self._money.refuse_if_suspended(account_id)
        view = await to_thread.run_sync(self._resume, account_id, job_id)
        self.on_change()
        return view

    def _resume(self, account_id: str, job_id: str) -> SftJob:
        with self._db.transaction() as session:
            row = self._found(session, account_id, job_id, lock=True)
            state = JobState(row.state)
            if state is JobState.COMPLETED:
                raise FailedPrecondition(
                    f"Job {job_name(account_id, job_id)!r} has completed; start a new job "
                    f"with warmStartFrom {row.output_model!r} to train further.",
                    code="job_finished",
                )
            if state in (JobState.PAUSED, JobState.CANCELLED, JobState.FAILED):
                if repo.output_taken(session, account_id, row.output_model, row.pk):
                    raise AlreadyExists(
                        f"Another job now writes {row.output_model!r}; this one cannot resume.",
                        code="output_model_taken",
                    )
                row.state = JobState.PENDING.value
                row.pause_reason = None
                row.status_code, row.status_message = "OK", ""
                row.completed_time = None
                row.lease_owner = row.lease_until = None
                row.update_time = self._clock.now()
            return SftJob.of(row)

    def _found(
        self, session: Session, account_id: str, job_id: str, *, lock: bool = False
    ) -> SftJobRow:
        if lock:
            lock_rows(
                session,
                SftJobRow,
                SftJobRow.account_id == account_id,
                SftJobRow.job_id == job_id,
            )
        row = repo.get(session, account_id, job_id)
        if row is None:
            raise job_not_found(account_id, job_id)
        return row
