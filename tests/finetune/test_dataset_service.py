"""The dataset service's read API that jobs use, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from firebox.accounts.credentials import DEMO_ACCOUNT
from firebox.errors import AlreadyExists, FailedPrecondition, NotFound
from firebox.finetune import dataset_repository
from firebox.finetune.dataset_files import iter_lines
from firebox.finetune.dataset_models import DatasetFormat, DatasetLayout, DatasetState
from firebox.finetune.dataset_schemas import DatasetCreate
from firebox.finetune.dataset_tokens import counter_for
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
    # Counted as the trainer sees it: the chat template rendered, then tokenized. The
    # bundled template (models/README.md) is BOS, then per message
    # <|im_start|>{role}\n{content}<|im_end|>\n; its special tokens are single tokens.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(
        str(services.settings.models_dir / "firebox-tiny" / "tokenizer.json")
    )
    expected = 0
    for line in lines:
        text = "<|begin_of_text|>" + "".join(
            f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
            for m in json.loads(line)["messages"]
        )
        expected += len(tokenizer.encode(text, add_special_tokens=False).ids)
    first = "<|begin_of_text|><|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    ids = tokenizer.encode(first, add_special_tokens=False).ids
    assert ids.count(tokenizer.token_to_id("<|im_start|>")) == 1  # one token, not pieces
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


def test_concurrent_uploads_cannot_both_take_the_last_free_bytes(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each upload pauses between reading the bytes held and reserving its own.

    Without the account lock both would read the same total there and both
    reserve; with it the second waits, and reads the first one's reservation.
    """
    datasets, uploads = services.datasets, services.dataset_uploads
    real = dataset_repository.bytes_held
    gate = threading.Barrier(2)

    def paused(session: Session, account_id: str) -> int:
        held = real(session, account_id)
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait(timeout=3)  # the other upload meets us here only if it is not locked out
        return held

    monkeypatch.setattr(dataset_repository, "bytes_held", paused)
    datasets.policy = replace(datasets.policy, account_quota_bytes=1000)
    principal = operator_principal()
    for name in ("r1", "r2"):
        datasets.create(principal, DEMO_ACCOUNT, DatasetCreate(dataset_id=name))
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def claim(name: str) -> None:
        barrier.wait(timeout=30)
        try:
            uploads.begin(principal, DEMO_ACCOUNT, name, "f.jsonl", 800)
            outcomes[name] = "ok"
        except FailedPrecondition as exc:
            outcomes[name] = exc.code

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("r1", "r2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["ok", "storage_quota_exceeded"]


def test_jobs_recheck_with_their_context_and_block_deletion(services: Services) -> None:
    datasets = services.datasets
    principal = operator_principal()
    datasets.create(principal, DEMO_ACCOUNT, DatasetCreate(dataset_id="ctx"))
    lines = [chat_line("short?", "yes."), chat_line("long " * 60 + "?", "no.")]
    put_file(services, DEMO_ACCOUNT, "ctx", "t.jsonl", "\n".join(lines) + "\n")
    assert datasets.validate_stored(DEMO_ACCOUNT, "ctx").state is DatasetState.READY
    files = datasets.ready_dataset(DEMO_ACCOUNT, "ctx")
    counter = counter_for(services.settings.models_dir / "firebox-tiny")
    report = datasets.check_for_job(files, counter, max_context=40)
    assert [(p.file, p.line) for p in report.problems] == [("t.jsonl", 2)]
    assert datasets.check_for_job(files, counter, max_context=2048).token_count == (
        files.estimated_token_count
    )

    datasets.in_use_checks.append(
        lambda account, dataset: (
            "accounts/demo/supervisedFineTuningJobs/j1" if dataset == "ctx" else None
        )
    )
    with pytest.raises(FailedPrecondition) as refused:
        datasets.delete(principal, DEMO_ACCOUNT, "ctx")
    assert refused.value.code == "dataset_in_use"
    datasets.in_use_checks.clear()
    datasets.delete(principal, DEMO_ACCOUNT, "ctx")
