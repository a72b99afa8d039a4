"""What other slices read of a dataset: its files in the blob store, format and counts.

SFT and batch jobs take a ``DatasetFiles`` from ``DatasetService.ready_dataset``
(only a READY dataset has one) and read its lines with ``iter_lines`` or the
local files with ``DatasetService.local_paths``: the trainer and the batch
runner read files, wherever the blob store keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from firebox.finetune.dataset_models import (
    DatasetFormat,
    DatasetLayout,
    DatasetRow,
    dataset_name,
    storage_prefix,
)
from firebox.storage.blobs import BlobInfo, BlobStore


@dataclass(frozen=True, slots=True)
class DatasetFile:
    """One file of a dataset: its name, where the blob store keeps it, its size."""

    filename: str
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class DatasetFiles:
    """A dataset as the jobs use it."""

    account_id: str
    dataset_id: str
    format: DatasetFormat
    layout: DatasetLayout
    example_count: int
    estimated_token_count: int
    files: tuple[DatasetFile, ...]  # in file-name order

    @property
    def name(self) -> str:
        """``accounts/{account}/datasets/{id}``."""
        return dataset_name(self.account_id, self.dataset_id)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def files_of(row: DatasetRow, blobs: BlobStore) -> tuple[DatasetFile, ...]:
    """The dataset's stored files, sorted by name."""
    return files_under(storage_prefix(row), blobs)


def files_under(prefix: str, blobs: BlobStore) -> tuple[DatasetFile, ...]:
    """The files under the blob-store folder ``prefix``, sorted by name."""
    return tuple(_file(prefix, b) for b in blobs.list(prefix))


def _file(prefix: str, blob: BlobInfo) -> DatasetFile:
    return DatasetFile(filename=blob.key[len(prefix) + 1 :], key=blob.key, size=blob.size)


def describe(row: DatasetRow, blobs: BlobStore) -> DatasetFiles:
    """``row`` with its files, as jobs read it."""
    return DatasetFiles(
        account_id=row.account_id,
        dataset_id=row.dataset_id,
        format=DatasetFormat(row.format),
        layout=DatasetLayout(row.layout),
        example_count=row.example_count or 0,
        estimated_token_count=row.estimated_token_count or 0,
        files=files_of(row, blobs),
    )


def iter_lines(dataset: DatasetFiles, blobs: BlobStore) -> Iterator[bytes]:
    """Every non-blank line of every file, in order, without its line ending (streamed)."""
    for file in dataset.files:
        with blobs.open(file.key) as stream:
            for line in stream:
                stripped = line.rstrip(b"\r\n")
                if stripped.strip():
                    yield stripped
