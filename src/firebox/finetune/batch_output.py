"""The end of a batch job: its output written in input order, then its final state.

A Fireworks job's results become its output dataset (one line per input,
the answer or the error); an OpenAI batch's become an output file (lines that
succeeded) and an error file (the rest), as OpenAI splits them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from firebox.clock import Clock
from firebox.errors import FireboxError
from firebox.finetune import batch_repository as repo
from firebox.finetune.batch_files import BatchFileService, file_key
from firebox.finetune.batch_models import BatchApi, BatchJobRow, JobState
from firebox.finetune.batch_schemas import job_name
from firebox.finetune.batch_service import BatchDatasets
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database

_FINAL = {
    "cancelled": JobState.CANCELLED,
    "failed": JobState.FAILED,
    "expired": JobState.EXPIRED,
}


class BatchOutput:
    """Writes a finished job's results and final state (in a worker thread: blocking I/O)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        blobs: BlobStore,
        files: BatchFileService,
        datasets: Callable[[], BatchDatasets],
    ) -> None:
        self._db = db
        self._clock = clock
        self._blobs = blobs
        self._files = files
        self._datasets = datasets

    def finish(self, pk: int, stop: str | None, failure: FireboxError | None) -> None:
        """Write the output in input order, then the final state."""
        with self._db.transaction() as session:
            row = repo.job_by_pk(session, pk)
            if row is None:
                return
            row.state = JobState.WRITING_RESULTS.value
            row.update_time = self._clock.now()
        final = _FINAL.get(stop or "", JobState.COMPLETED)
        with self._db.transaction() as session:
            row = repo.job_by_pk(session, pk)
            if row is None:
                return
            session.expunge(row)
        if row.api == BatchApi.OPENAI.value:
            output_id, error_id = self._write_openai(row)
            fields: dict[str, Any] = {"output_file_id": output_id, "error_file_id": error_id}
        else:
            key = f"batch/{row.account_id}/{row.uid}/output.jsonl"
            self._write(row.pk, key, None)
            self._datasets().store_output(
                row.account_id, row.output_dataset, key, job_name(row.account_id, row.job_id)
            )
            self._blobs.delete_prefix(key.rsplit("/", 1)[0])  # the dataset holds its copy
            fields = {}
        now = self._clock.now()
        with self._db.transaction() as session:
            stored = repo.job_by_pk(session, pk)
            if stored is None:
                return
            for name, value in fields.items():
                setattr(stored, name, value)
            stored.state = final.value
            repo.delete_results(session, pk)  # written out: the output holds them now
            if failure is not None:
                stored.status_code = failure.code
                stored.status_message = failure.message
            stored.end_time = now
            stored.update_time = now
            stored.lease_owner = ""
            stored.lease_until = None

    def _write_openai(self, row: BatchJobRow) -> tuple[str, str]:
        """The output file (lines that succeeded) and the error file (the rest), registered."""
        ids = []
        for ok, suffix in ((True, "output"), (False, "errors")):
            file_id = f"file-{uuid.uuid4().hex}"
            key = file_key(row.account_id, file_id)
            size = self._write(row.pk, key, ok)
            if size == 0 and not ok:
                self._blobs.delete_prefix(key.rsplit("/", 1)[0])
                ids.append("")
                continue
            self._files.register(
                row.account_id, file_id, "batch_output", f"{row.job_id}_{suffix}.jsonl", size, key
            )
            ids.append(file_id)
        return ids[0], ids[1]

    def _write(self, pk: int, key: str, ok: bool | None) -> int:
        """Stream the job's results (those with ``ok``, or all) in line order to ``key``."""
        writer = self._blobs.writer(key, max_bytes=2**62)
        try:
            with self._db.transaction() as session:
                for result in repo.iter_results(session, pk):
                    if ok is None or result.ok == ok:
                        writer.write(result.output.encode() + b"\n")
            return writer.commit()
        finally:
            writer.abort()

    def fail(self, pk: int, error: FireboxError | None) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            row = repo.job_by_pk(session, pk)
            if row is None:
                return
            row.state = JobState.FAILED.value
            row.status_code = error.code if error else "INTERNAL"
            row.status_message = error.message if error else "The job failed; see the server log."
            row.end_time = now
            row.update_time = now
            row.lease_owner = ""
            row.lease_until = None
