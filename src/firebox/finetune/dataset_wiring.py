"""Builds the dataset service of one process from settings."""

from __future__ import annotations

import threading

from firebox.clock import Clock
from firebox.finetune.dataset_service import DatasetPolicy, DatasetService
from firebox.finetune.dataset_tokens import TokenCounter, counter_for
from firebox.settings import Settings
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database


class LazyCounter:
    """The dataset tokenizer, loaded on first use (once, whichever thread asks first)."""

    def __init__(self, settings: Settings) -> None:
        self._folder = settings.dataset_tokenizer or settings.models_dir / "firebox-tiny"
        self._lock = threading.Lock()
        self._counter: TokenCounter | None = None

    def __call__(self) -> TokenCounter:
        with self._lock:
            if self._counter is None:
                self._counter = counter_for(self._folder)
            return self._counter


def build_datasets(
    settings: Settings, db: Database, clock: Clock, blobs: BlobStore
) -> DatasetService:
    policy = DatasetPolicy(
        max_dataset_bytes=settings.dataset_max_bytes,
        account_quota_bytes=settings.dataset_storage_quota_bytes,
        direct_upload_bytes=settings.dataset_direct_upload_bytes,
        max_problems=settings.dataset_max_problems,
        max_example_tokens=settings.dataset_max_example_tokens,
    )
    return DatasetService(db, clock, blobs, policy, LazyCounter(settings))
