"""The dataset service's read API that jobs use, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firebox.accounts.credentials import DEMO_ACCOUNT
from firebox.errors import AlreadyExists, FailedPrecondition, NotFound
from firebox.finetune.dataset_files import iter_lines
from firebox.finetune.dataset_models import DatasetFormat, DatasetLayout, DatasetState
from firebox.finetune.dataset_schemas import DatasetCreate
from firebox.services import Services
from tests.finetune.dataset_support import chat_line, operator_principal, put_file


def test_a_valid_upload_becomes_ready_with_exact_counts(services: Services) -> None:
    datasets = services.datasets
    principal = operator_principal()
    datasets.create(principal, DEMO_ACCOUNT, DatasetCreate(dataset_id="ds1"))
    with pytest.raises(FailedPrecondition) as refused:
        datasets.ready_dataset(DEMO_ACCOUNT, "ds1")
    assert refused.value.code == "dataset_not_ready"

    lines = [chat_line("What is 2+2?", "4"), chat_line("Capital of France?", "Paris.")]
    put_file(services, DEMO_ACCOUNT, "ds1", "train.jsonl", "\n".join(lines) + "\n")
    shown = datasets.validate_stored(DEMO_ACCOUNT, "ds1")
    assert shown.state is DatasetState.READY, shown.status
    assert shown.format is DatasetFormat.CHAT
    assert shown.example_count == 2

    files = datasets.ready_dataset(DEMO_ACCOUNT, f"accounts/{DEMO_ACCOUNT}/datasets/ds1")
    assert files.layout is DatasetLayout.CHAT
    assert files.example_count == 2
    # Counted as the trainer sees it: the chat template rendered, then tokenized.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(services.settings.models_dir / "firebox-tiny")
    expected = 0
    for line in lines:
        text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        expected += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert files.estimated_token_count == expected
    assert [p.name for p in datasets.local_paths(files)] == ["train.jsonl"]
    assert list(iter_lines(files, datasets.blobs)) == [line.encode() for line in lines]


def test_outputs_are_claimed_then_stored_ready(services: Services, tmp_path: Path) -> None:
    datasets = services.datasets
    datasets.create_output(DEMO_ACCOUNT, "out1", source_job_name="accounts/demo/batchJobs/b")
    with pytest.raises(AlreadyExists):
        datasets.create_output(DEMO_ACCOUNT, "out1", source_job_name="x")
    results = tmp_path / "results.jsonl"
    results.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n')
    stored = datasets.store_output(
        DEMO_ACCOUNT, "out1", {"results.jsonl": results}, source_job_name="b"
    )
    assert stored.example_count == 2
    assert stored.files[0].filename == "results.jsonl"
    assert datasets.ready_dataset(DEMO_ACCOUNT, "out1").total_bytes == results.stat().st_size
    # A dataset that is absent is made by store_output itself.
    made = datasets.store_output(DEMO_ACCOUNT, "out2", {"r.jsonl": results}, source_job_name="b")
    assert made.example_count == 2
    with pytest.raises(NotFound):
        datasets.ready_dataset(DEMO_ACCOUNT, "missing")
