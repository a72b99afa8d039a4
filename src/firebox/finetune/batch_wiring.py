"""Builds the batch inference slice of one process: jobs, files and the runner."""

from __future__ import annotations

from dataclasses import dataclass

from firebox.clock import Clock
from firebox.finetune.batch_datasets import DatasetsForBatch
from firebox.finetune.batch_files import BatchFileService
from firebox.finetune.batch_runner import BatchRunner
from firebox.finetune.batch_service import BatchDatasets, BatchJobService
from firebox.finetune.dataset_service import DatasetService
from firebox.inference.models import ModelResolver
from firebox.inference.serving import InferenceService
from firebox.settings import Settings
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database


@dataclass
class BatchServices:
    """Batch jobs (both API shapes), OpenAI batch files, and this replica's runner."""

    jobs: BatchJobService
    files: BatchFileService
    runner: BatchRunner

    def use_datasets(self, datasets: BatchDatasets) -> None:
        """Read inputs from and write outputs to the datasets slice (once it is built)."""
        self.jobs.datasets = datasets


def build_batch(
    settings: Settings,
    db: Database,
    clock: Clock,
    blobs: BlobStore,
    inference: InferenceService,
    models: ModelResolver,
    datasets: DatasetService | None = None,
) -> BatchServices:
    files = BatchFileService(db, clock, blobs, settings.batch_file_max_bytes)

    def check_model(account_id: str, model: str) -> None:
        models.resolve_text(account_id, model)

    jobs = BatchJobService(
        db, clock, blobs, check_model, DatasetsForBatch(datasets, blobs) if datasets else None
    )
    runner = BatchRunner(
        db,
        clock,
        blobs,
        inference,
        files,
        lambda: jobs.datasets,
        concurrency=settings.batch_concurrency,
        max_jobs=settings.batch_max_jobs,
        lull_max_wait_s=settings.batch_lull_max_wait_s if settings.batch_yield else 0.0,
        background=settings.batch_yield,
        poll_s=settings.batch_poll_s,
        lease_s=settings.batch_lease_s,
    )
    jobs.wake = runner.wake
    if datasets is not None:
        datasets.in_use_checks.append(jobs.dataset_user)  # no deleting what a job reads
    return BatchServices(jobs=jobs, files=files, runner=runner)
