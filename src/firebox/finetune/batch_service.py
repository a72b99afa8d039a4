"""Batch inference jobs: create, read, list, cancel and delete, in either API shape.

Fireworks' ``batchInferenceJobs`` read an input dataset and write an output
dataset (``BatchDatasets``: the datasets slice); OpenAI's ``/v1/batches`` read
an uploaded file and write output and error files (``batch_files.py``). Both
make the same job row, which ``BatchRunner`` runs: every line through the
serverless inference path, metered at the batch price, never rate-limited.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from firebox.accounts.ids import validate_id
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from firebox.finetune import batch_repository as repo
from firebox.finetune.batch_lines import CHAT_URL, parameters
from firebox.finetune.batch_models import (
    FINAL_STATES,
    BatchApi,
    BatchJobRow,
    JobState,
)
from firebox.finetune.batch_schemas import (
    BatchInferenceJob,
    BatchInferenceJobList,
    BatchJobSpec,
    OpenAIBatchCreate,
    job_name,
    openai_batch,
)
from firebox.paging import decode_row_id_token, next_token, page_size
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database

OPENAI_WINDOW = timedelta(hours=24)


class BatchDatasets(Protocol):
    """What batch jobs need of the datasets slice."""

    def input_keys(self, account_id: str, dataset: str) -> list[str]:
        """The blob keys of a READY dataset's files, in order; a 4xx when it is not usable."""
        ...

    def claim_output(self, account_id: str, dataset: str, job_name: str) -> None:
        """Make the output dataset (not READY until stored); a 4xx when it cannot be made."""
        ...

    def store_output(self, account_id: str, dataset: str, key: str, job_name: str) -> None:
        """Make the output dataset hold the blob ``key`` (a JSONL file), READY."""
        ...


class NoDatasets:
    """No datasets slice: only OpenAI-shaped batches (uploaded files) can run."""

    def _refuse(self) -> FailedPrecondition:
        return FailedPrecondition(
            "Datasets are not available on this server; use the OpenAI batch API "
            "(POST /v1/files, POST /v1/batches).",
            code="datasets_unavailable",
        )

    def input_keys(self, account_id: str, dataset: str) -> list[str]:
        raise self._refuse()

    def claim_output(self, account_id: str, dataset: str, job_name: str) -> None:
        raise self._refuse()

    def store_output(self, account_id: str, dataset: str, key: str, job_name: str) -> None:
        raise self._refuse()


def _short_id(value: str, account_id: str, segment: str) -> str:
    """``value`` as a short id: a full ``accounts/{a}/{segment}/{id}`` name is accepted too."""
    prefix = f"accounts/{account_id}/{segment}/"
    return value[len(prefix) :] if value.startswith(prefix) else value


class BatchJobService:
    """The rules of batch jobs; the runner (``batch_runner.py``) does the work."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        blobs: BlobStore,
        check_model: Callable[[str, str], None],
        datasets: BatchDatasets | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._blobs = blobs
        self._check_model = check_model  # (account, model): raises when it cannot be served
        self.datasets: BatchDatasets = datasets or NoDatasets()
        self.wake = wake or (lambda: None)  # tells the runner a job is waiting

    # -- Fireworks ------------------------------------------------------------------------

    def create(
        self, principal: Principal, account_id: str, job_id: str | None, spec: BatchJobSpec
    ) -> BatchInferenceJob:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        principal.require(account_id, Permission.INFERENCE)
        job_id = validate_id(
            job_id or f"batch-{uuid.uuid4().hex[:12]}", "batch job", "batchInferenceJobId"
        )
        if spec.continued_from_job_name:
            raise InvalidArgument(
                "continuedFromJobName is not supported: a job continues by itself after a "
                "restart. Create a new job for the lines you want to run again.",
                code="unsupported_parameter",
                param="continuedFromJobName",
            )
        if not spec.model:
            raise InvalidArgument("model is required.", param="model")
        if not spec.input_dataset_id:
            raise InvalidArgument("inputDatasetId is required.", param="inputDatasetId")
        self._check_model(account_id, spec.model)
        input_keys = self.datasets.input_keys(account_id, spec.input_dataset_id)
        raw = (
            spec.inference_parameters.model_dump(by_alias=True, exclude_none=True)
            if spec.inference_parameters
            else {}
        )
        parameters(raw)  # refuses a bad extraBody now, not per line
        source = spec.input_dataset_id
        if "/" not in source:
            source = f"accounts/{account_id}/datasets/{source}"
        output = spec.output_dataset_id or f"{job_id}-output"
        with self._db.transaction() as session:
            if repo.job(session, account_id, job_id) is not None:
                raise _exists(account_id, job_id)
        self.datasets.claim_output(account_id, output, job_name(account_id, job_id))
        if "/" not in output:
            output = f"accounts/{account_id}/datasets/{output}"
        row = self._new_row(principal, account_id, job_id, BatchApi.FIREWORKS)
        row.display_name = spec.display_name or job_id
        row.model = spec.model
        row.input_dataset = source
        row.output_dataset = output
        row.input_keys = input_keys
        row.parameters = raw
        return BatchInferenceJob.of(self._insert(row))

    def get(self, principal: Principal, account_id: str, job_id: str) -> BatchInferenceJob:
        principal.require(account_id, Permission.RESOURCES_READ)
        return BatchInferenceJob.of(self._found(account_id, job_id, BatchApi.FIREWORKS))

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> BatchInferenceJobList:
        principal.require(account_id, Permission.RESOURCES_READ)
        limit = page_size(size)
        after = decode_row_id_token(token)
        with self._db.transaction() as session:
            rows = repo.jobs(session, account_id, BatchApi.FIREWORKS.value, after, limit)
            total = repo.count_jobs(session, account_id, BatchApi.FIREWORKS.value)
            return BatchInferenceJobList(
                batch_inference_jobs=[BatchInferenceJob.of(r) for r in rows],
                next_page_token=next_token([str(r.pk) for r in rows], limit),
                total_size=total,
            )

    def delete(self, principal: Principal, account_id: str, job_id: str) -> None:
        """Delete a job; a running one is cancelled first (its runner stops at its next line)."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        with self._db.transaction() as session:
            row = repo.job(
                session, account_id, _short_id(job_id, account_id, "batchInferenceJobs"), lock=True
            )
            if row is None or row.api != BatchApi.FIREWORKS.value:
                raise _not_found(account_id, job_id)
            repo.delete_results(session, row.pk)
            session.delete(row)
        self._blobs.delete_prefix(f"batch/{account_id}/{row.uid}")

    def dataset_user(self, account_id: str, dataset_id: str) -> str | None:
        """The job still reading or writing the dataset, if any (``in_use_checks``)."""
        with self._db.transaction() as session:
            found = repo.job_using(
                session, account_id, f"accounts/{account_id}/datasets/{dataset_id}"
            )
        return None if found is None else f"batch inference job {job_name(account_id, found)!r}"

    # -- OpenAI ---------------------------------------------------------------------------

    def create_openai(self, principal: Principal, body: OpenAIBatchCreate) -> dict[str, Any]:
        account_id = principal.account_id
        principal.require(account_id, Permission.INFERENCE)
        if body.endpoint not in (CHAT_URL, "/chat/completions"):
            raise InvalidArgument(
                f"endpoint {body.endpoint!r} is not served in batches; use {CHAT_URL}.",
                code="unsupported_endpoint",
                param="endpoint",
            )
        with self._db.transaction() as session:
            source = repo.file(session, account_id, body.input_file_id)
            if source is None:
                raise NotFound(
                    f"File {body.input_file_id!r} was not found; upload it with POST /v1/files.",
                    code="file_not_found",
                )
            if source.purpose != "batch":
                raise InvalidArgument(
                    f"File {source.id!r} has purpose {source.purpose!r}; a batch reads a file "
                    "uploaded with purpose 'batch'.",
                    param="input_file_id",
                )
            key = source.key
        row = self._new_row(principal, account_id, f"batch_{uuid.uuid4().hex}", BatchApi.OPENAI)
        row.display_name = ""
        row.input_file_id = body.input_file_id
        row.endpoint = CHAT_URL
        row.input_keys = [key]
        row.parameters = {}
        row.job_metadata = dict(body.metadata or {})
        row.expire_time = row.create_time + OPENAI_WINDOW
        return openai_batch(self._insert(row))

    def get_openai(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        principal.require(principal.account_id, Permission.INFERENCE)
        return openai_batch(self._found(principal.account_id, batch_id, BatchApi.OPENAI))

    def list_openai(self, principal: Principal, after: str | None, limit: int) -> dict[str, Any]:
        principal.require(principal.account_id, Permission.INFERENCE)
        account_id = principal.account_id
        with self._db.transaction() as session:
            after_pk = None
            if after:
                anchor = repo.job(session, account_id, after)
                after_pk = anchor.pk if anchor is not None else None
            rows = repo.jobs(session, account_id, BatchApi.OPENAI.value, after_pk, limit + 1)
            data = [openai_batch(r) for r in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }

    def cancel_openai(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        """Cancel: no new line starts; the lines done stay, written to the output file."""
        principal.require(principal.account_id, Permission.INFERENCE)
        with self._db.transaction() as session:
            row = repo.job(session, principal.account_id, batch_id, lock=True)
            if row is None or row.api != BatchApi.OPENAI.value:
                raise _not_found(principal.account_id, batch_id)
            if JobState(row.state) not in FINAL_STATES:
                row.state = JobState.CANCELLING.value
                row.update_time = self._clock.now()
            session.flush()
            answer = openai_batch(row)
        self.wake()
        return answer

    # -- shared ---------------------------------------------------------------------------

    def _new_row(
        self, principal: Principal, account_id: str, job_id: str, api: BatchApi
    ) -> BatchJobRow:
        now = self._clock.now()
        return BatchJobRow(
            uid=uuid.uuid4().hex,
            account_id=account_id,
            job_id=job_id,
            api=api.value,
            created_by=principal.user_id,
            state=JobState.PENDING.value,
            status_code="OK",
            status_message="",
            total=0,
            completed=0,
            failed=0,
            input_tokens=0,
            output_tokens=0,
            cached_tokens=0,
            lease_owner="",
            create_time=now,
            update_time=now,
        )

    def _insert(self, row: BatchJobRow) -> BatchJobRow:
        try:
            with self._db.transaction() as session:
                session.add(row)
                session.flush()
                session.expunge(row)
        except IntegrityError:
            raise _exists(row.account_id, row.job_id) from None
        self.wake()
        return row

    def _found(self, account_id: str, job_id: str, api: BatchApi) -> BatchJobRow:
        short = _short_id(job_id, account_id, "batchInferenceJobs")
        with self._db.transaction() as session:
            row = repo.job(session, account_id, short)
            if row is None or row.api != api.value:
                raise _not_found(account_id, job_id)
            session.expunge(row)
            return row


def _exists(account_id: str, job_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"Batch job {job_name(account_id, job_id)!r} already exists; pick another id.",
        headers={"x-should-retry": "false"},
    )


def _not_found(account_id: str, job_id: str) -> NotFound:
    return NotFound(
        f"Batch job {job_id!r} was not found in account {account_id!r}.",
        code="batch_job_not_found",
    )
