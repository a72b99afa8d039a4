"""Datasets: create, read, change and delete them; validate their files; the jobs' read API.

A dataset is created empty (``UPLOADING``); its files arrive by ``:upload``
(multipart, streamed) or by signed URLs (``:getUploadEndpoint`` then
``:validateUpload``; see ``dataset_uploads``). Validation reads every line
(``dataset_validation``): a dataset without problems becomes ``READY`` with
its counts, one with problems stays ``UPLOADING`` with ``status``
``INVALID_ARGUMENT`` and the problems listed. A READY dataset's files never
change, so a job reading them never sees them move.

Jobs use ``ready_dataset`` (a READY dataset's files and counts) and write
their results with ``create_output`` / ``store_output``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.ids import validate_id
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from firebox.finetune import dataset_repository as repo
from firebox.finetune.dataset_files import (
    DatasetFile,
    DatasetFiles,
    describe,
    files_of,
    files_under,
)
from firebox.finetune.dataset_models import (
    DatasetFormat,
    DatasetLayout,
    DatasetRow,
    DatasetSource,
    DatasetState,
    dataset_name,
    dataset_root,
    staging_prefix,
    storage_prefix,
)
from firebox.finetune.dataset_schemas import Dataset, DatasetCreate, DatasetList, DatasetSpec
from firebox.finetune.dataset_status import declared_layout, record_report
from firebox.finetune.dataset_tokens import TokenCounter
from firebox.finetune.dataset_validation import Report, Validator
from firebox.paging import decode_token, next_token, page_size
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DatasetPolicy:
    """The operator's bounds on datasets."""

    max_dataset_bytes: int  # all files of one dataset
    account_quota_bytes: int  # all datasets of one account
    direct_upload_bytes: int  # largest file ``:upload`` takes (larger: signed URLs)
    max_problems: int  # problems kept per validation
    max_example_tokens: int | None  # None: the tokenizer model's context length


def not_found(account_id: str, dataset_id: str) -> NotFound:
    return NotFound(
        f"Dataset {dataset_name(account_id, dataset_id)!r} was not found.",
        code="dataset_not_found",
    )


def parse_dataset_ref(account_id: str, ref: str) -> str:
    """The dataset id of ``ref``: a bare id, or ``accounts/{account_id}/datasets/{id}``."""
    parts = ref.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "datasets":
        if parts[1] != account_id:
            raise InvalidArgument(
                f"Dataset {ref!r} belongs to another account; use one of {account_id!r}.",
                code="invalid_dataset",
            )
        return parts[3]
    if "/" in ref:
        raise InvalidArgument(
            f"{ref!r} is not a dataset name; use accounts/{account_id}/datasets/<id>.",
            code="invalid_dataset",
        )
    return ref


class DatasetService:
    """Datasets of accounts, and their files in the blob store."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        blobs: BlobStore,
        policy: DatasetPolicy,
        counter: Callable[[], TokenCounter],
    ) -> None:
        self._db = db
        self._clock = clock
        self.blobs = blobs
        self.policy = policy
        self._counter = counter  # built on first use: loading a tokenizer takes a moment
        # Jobs register a check here: given (account, dataset id), the name of a job that
        # still reads the dataset, or None. Deleting a dataset in use is refused.
        self.in_use_checks: list[Callable[[str, str], str | None]] = []

    # -- the read API of jobs ---------------------------------------------------

    def ready_dataset(self, account_id: str, dataset: str) -> DatasetFiles:
        """A READY dataset's files and counts; ``dataset`` is an id or a full name.

        A missing dataset is a 404 ``dataset_not_found``; one not READY a 400
        ``dataset_not_ready`` that says why (its validation problems).
        """
        dataset_id = parse_dataset_ref(account_id, dataset)
        with self._db.transaction() as session:
            row = repo.get(session, account_id, dataset_id)
            if row is None:
                raise not_found(account_id, dataset_id)
            if row.state != DatasetState.READY.value:
                why = row.status_message or "its files have not been uploaded and validated yet"
                raise FailedPrecondition(
                    f"Dataset {dataset_name(account_id, dataset_id)!r} is not READY: {why}",
                    code="dataset_not_ready",
                )
            return describe(row, self.blobs)

    def local_paths(self, dataset: DatasetFiles) -> list[Path]:
        """Local files holding the dataset's files, in order (trainers read files)."""
        return [self.blobs.local_path(f.key) for f in dataset.files]

    def check_for_job(
        self, dataset: DatasetFiles, counter: TokenCounter, max_context: int
    ) -> Report:
        """Validate a READY dataset again for a job: its base's tokenizer, its context length.

        A job calls it before training (``dataset_tokens.counter_for(base_dir)``);
        the report's ``token_count`` is then exact for that base, and every
        example longer than ``max_context`` is a problem with its line.
        """
        validator = Validator(
            counter,
            layout=dataset.layout,
            max_example_tokens=max_context,
            max_problems=self.policy.max_problems,
        )
        for file in dataset.files:
            with self.blobs.open(file.key) as stream:
                validator.feed(file.filename, stream)
        return validator.finish()

    def create_output(
        self, account_id: str, dataset_id: str, *, source_job_name: str, display_name: str = ""
    ) -> None:
        """Claim ``dataset_id`` for a job's output (409 when taken); READY once stored."""
        validate_id(dataset_id, "dataset", "outputDatasetId")
        spec = DatasetSpec(display_name=display_name or dataset_id)
        with self._db.transaction() as session:
            self._insert(session, account_id, dataset_id, spec, created_by=source_job_name)
            row = repo.get(session, account_id, dataset_id)
            assert row is not None
            row.source = DatasetSource.JOB_OUTPUT.value
            row.source_job_name = source_job_name
            row.layout = DatasetLayout.OUTPUT.value

    def store_output(
        self, account_id: str, dataset_id: str, files: Mapping[str, Path], *, source_job_name: str
    ) -> DatasetFiles:
        """Copy a job's result files into the dataset (made if absent) and mark it READY.

        ``example_count`` is the number of non-blank lines of the first file.
        Storing again replaces the files (a job that restarts writes again).
        """
        with self._db.transaction() as session:
            exists = repo.get(session, account_id, dataset_id) is not None
        if not exists:
            # A concurrent store of the same job may make it first: checked below.
            with contextlib.suppress(AlreadyExists):
                self.create_output(account_id, dataset_id, source_job_name=source_job_name)
        with self._db.transaction() as session:
            row = self._get_locked(session, account_id, dataset_id)
            if row.source != DatasetSource.JOB_OUTPUT.value:
                raise FailedPrecondition(
                    f"Dataset {dataset_name(account_id, dataset_id)!r} is not a job's output.",
                    code="dataset_exists",
                )
            prefix = storage_prefix(row)
        self.blobs.delete_prefix(prefix)
        lines = 0
        for index, (filename, path) in enumerate(sorted(files.items())):
            counted = self._copy_in(f"{prefix}/{filename}", path)
            lines = counted if index == 0 else lines
        with self._db.transaction() as session:
            row = self._get_locked(session, account_id, dataset_id)
            row.total_bytes = sum(f.size for f in files_of(row, self.blobs))
            row.example_count = lines
            row.state = DatasetState.READY.value
            row.status_code, row.status_message = "OK", ""
            row.update_time = self._clock.now()
            return describe(row, self.blobs)

    def _copy_in(self, key: str, path: Path) -> int:
        writer = self.blobs.writer(key, max_bytes=self.policy.max_dataset_bytes)
        lines = 0
        try:
            with path.open("rb") as source:
                while chunk := source.read(_COPY_CHUNK):
                    writer.write(chunk)
            with path.open("rb") as source:
                lines = sum(1 for line in source if line.strip())
            writer.commit()
        finally:
            writer.abort()
        return lines

    # -- the resource -------------------------------------------------------------

    def create(self, principal: Principal, account_id: str, body: DatasetCreate) -> Dataset:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        dataset_id = validate_id(body.dataset_id, "dataset", "datasetId")
        with self._db.transaction() as session:
            row = self._insert(
                session, account_id, dataset_id, body.dataset, created_by=_actor(principal)
            )
            if body.source_dataset_id:
                row.source_dataset_id = body.source_dataset_id
            return Dataset.of(row)

    def get(self, principal: Principal, account_id: str, dataset_id: str) -> Dataset:
        principal.require(account_id, Permission.RESOURCES_READ)
        with self._db.transaction() as session:
            row = repo.get(session, account_id, dataset_id)
            if row is None:
                raise not_found(account_id, dataset_id)
            return Dataset.of(row)

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> DatasetList:
        principal.require(account_id, Permission.RESOURCES_READ)
        limit = page_size(size)
        with self._db.transaction() as session:
            rows = repo.list_page(session, account_id, after=decode_token(token), limit=limit)
            total = repo.count(session, account_id)
            return DatasetList(
                datasets=[Dataset.of(r) for r in rows],
                next_page_token=next_token([r.dataset_id for r in rows], limit),
                total_size=total,
            )

    def update(
        self, principal: Principal, account_id: str, dataset_id: str, spec: DatasetSpec
    ) -> Dataset:
        """Change the fields the body sets; ``format`` only before the dataset is READY."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        with self._db.transaction() as session:
            row = self._get_locked(session, account_id, dataset_id)
            if spec.format is not None and spec.format.value != row.format:
                if row.state == DatasetState.READY.value:
                    raise FailedPrecondition(
                        "The format of a READY dataset cannot change; create a new dataset.",
                        code="dataset_ready",
                    )
                row.format = spec.format.value
            if spec.display_name is not None:
                row.display_name = spec.display_name
            if spec.external_url is not None:
                row.external_url = spec.external_url
            if spec.example_count is not None and row.state != DatasetState.READY.value:
                row.example_count = spec.example_count
            row.update_time = self._clock.now()
            return Dataset.of(row)

    def delete(self, principal: Principal, account_id: str, dataset_id: str) -> None:
        """Delete the dataset and its files."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        for check in self.in_use_checks:
            user = check(account_id, dataset_id)
            if user is not None:
                raise FailedPrecondition(
                    f"Dataset {dataset_name(account_id, dataset_id)!r} is used by {user}; "
                    "delete it once that job has finished or been cancelled.",
                    code="dataset_in_use",
                )
        with self._db.transaction() as session:
            row = self._get_locked(session, account_id, dataset_id)
            prefix = dataset_root(row)
            if not repo.remove(session, row.pk):
                raise not_found(account_id, dataset_id)
        self.blobs.delete_prefix(prefix)

    # -- validation -----------------------------------------------------------------

    def validate_stored(
        self, account_id: str, dataset_id: str, *, seq: int | None = None
    ) -> Dataset:
        """Validate the staged files against what was announced; record the result.

        Valid files move into the dataset's ``files/`` folder as it turns READY,
        under the row's lock. ``seq`` names the staging folder the caller
        uploaded to: if another upload replaced it meanwhile (or the dataset
        became READY), that is a 409 and nothing of this upload is used.
        """
        with self._db.transaction() as session:
            row = self._get_locked(session, account_id, dataset_id)
            if seq is None and row.state == DatasetState.READY.value:
                return Dataset.of(row)
            _check_current(row, seq)
            layout = declared_layout(DatasetFormat(row.format))
            manifest = dict(row.upload_manifest or {})
            staged_seq, staging = row.staging_seq, staging_prefix(row)
        stored = {f.filename: f for f in files_under(staging, self.blobs)}
        for filename in [name for name in stored if manifest and name not in manifest]:
            self.blobs.delete(stored.pop(filename).key)  # left by an earlier file set
        try:
            report = self._check(layout, manifest, stored)
        except FileNotFoundError:
            # A newer upload replaced this staging folder while we read it.
            with self._db.transaction() as session:
                row = self._get_locked(session, account_id, dataset_id)
                if row.staging_seq == staged_seq and row.state != DatasetState.READY.value:
                    raise
                _check_current(row, seq)
                return Dataset.of(row)
        with self._db.transaction() as session:
            row = self._get_locked(session, account_id, dataset_id)
            if row.state == DatasetState.READY.value or row.staging_seq != staged_seq:
                _check_current(row, seq)
                return Dataset.of(row)  # superseded while we read: the newer upload decides
            if report.ok:
                final = storage_prefix(row)
                self.blobs.delete_prefix(final)
                for filename, file in stored.items():
                    self.blobs.move(file.key, f"{final}/{filename}")
            record_report(row, report, sum(f.size for f in stored.values()), self._clock.now())
            shown = Dataset.of(row)
        if report.ok:
            self.blobs.delete_prefix(staging)
        return shown

    def _check(
        self, layout: DatasetLayout, manifest: dict[str, Any], stored: dict[str, DatasetFile]
    ) -> Report:
        counter = self._counter()
        limit = self.policy.max_example_tokens or getattr(counter, "max_context", None)
        validator = Validator(
            counter, layout=layout, max_example_tokens=limit, max_problems=self.policy.max_problems
        )
        for filename, size in sorted(manifest.items()):
            have = stored.get(filename)
            if have is None:
                validator.missing(filename, f"the file was announced ({size} bytes), not uploaded")
            elif have.size != int(size):
                validator.missing(filename, f"the file has {have.size} bytes, not {size}")
        for filename, file in sorted(stored.items()):
            with self.blobs.open(file.key) as stream:
                validator.feed(filename, stream)
        return validator.finish()

    # -- shared steps -------------------------------------------------------------

    def _insert(
        self,
        session: Session,
        account_id: str,
        dataset_id: str,
        spec: DatasetSpec,
        *,
        created_by: str,
    ) -> DatasetRow:
        if accounts_repo.get_account(session, account_id) is None:
            raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")
        now = self._clock.now()
        row = DatasetRow(
            account_id=account_id,
            dataset_id=dataset_id,
            display_name=spec.display_name or "",
            format=(spec.format or DatasetFormat.UNSPECIFIED).value,
            source=_source_of(spec).value,
            source_dataset_id=_source_ref(spec),
            source_job_name=spec.source_job_name or "",
            external_url=spec.external_url or "",
            created_by=created_by,
            example_count=spec.example_count,
            create_time=now,
            update_time=now,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise AlreadyExists(
                f"Dataset {dataset_name(account_id, dataset_id)!r} exists already; "
                "pick another datasetId or delete it first.",
                code="dataset_exists",
                headers={"x-should-retry": "false"},
            ) from None
        return row

    def _get_locked(self, session: Session, account_id: str, dataset_id: str) -> DatasetRow:
        row = repo.get_for_update(session, account_id, dataset_id)
        if row is None:
            raise not_found(account_id, dataset_id)
        return row


def _check_current(row: DatasetRow, seq: int | None) -> None:
    """Raise unless the upload to staging folder ``seq`` is still the dataset's pending one."""
    if seq is None:
        return
    if row.state == DatasetState.READY.value or row.staging_seq != seq:
        raise Aborted(
            f"Another upload to dataset {row.dataset_id!r} replaced this one (or the "
            "dataset became READY) while it ran; get the dataset to see its state.",
            code="upload_superseded",
        )


def _actor(principal: Principal) -> str:
    return f"accounts/{principal.account_id}/users/{principal.user_id}"


def _source_of(spec: DatasetSpec) -> DatasetSource:
    if spec.splitted is not None:
        return DatasetSource.SPLITTED
    if spec.transformed is not None:
        return DatasetSource.TRANSFORMED
    if spec.evaluation_result is not None:
        return DatasetSource.EVALUATION_RESULT
    return DatasetSource.USER_UPLOADED


def _source_ref(spec: DatasetSpec) -> str:
    ref = spec.splitted or spec.transformed
    return (ref.source_dataset_id or "") if ref is not None else ""
