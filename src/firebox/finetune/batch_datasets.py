"""Batch jobs over the datasets slice: input datasets of requests, output datasets of results."""

from __future__ import annotations

from firebox.errors import InvalidArgument
from firebox.finetune.dataset_models import DatasetLayout
from firebox.finetune.dataset_service import DatasetService, parse_dataset_ref
from firebox.storage.blobs import BlobStore

OUTPUT_FILE = "results.jsonl"


class DatasetsForBatch:
    """Implements ``batch_service.BatchDatasets`` with ``DatasetService``."""

    def __init__(self, datasets: DatasetService, blobs: BlobStore) -> None:
        self._datasets = datasets
        self._blobs = blobs

    def input_keys(self, account_id: str, dataset: str) -> list[str]:
        files = self._datasets.ready_dataset(account_id, dataset)
        if files.layout is not DatasetLayout.BATCH:
            raise InvalidArgument(
                f"Dataset {files.name!r} holds {files.layout.value.lower()} lines; a batch job "
                'reads OpenAI batch requests, one {"custom_id": ..., "body": {...}} a line.',
                code="invalid_dataset",
                param="inputDatasetId",
            )
        return [f.key for f in files.files]

    def claim_output(self, account_id: str, dataset: str, job_name: str) -> None:
        dataset_id = parse_dataset_ref(account_id, dataset)
        self._datasets.create_output(account_id, dataset_id, source_job_name=job_name)

    def store_output(self, account_id: str, dataset: str, key: str, job_name: str) -> None:
        dataset_id = parse_dataset_ref(account_id, dataset)
        path = self._blobs.local_path(key)
        self._datasets.store_output(
            account_id, dataset_id, {OUTPUT_FILE: path}, source_job_name=job_name
        )
