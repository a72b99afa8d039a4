"""Fine-tuning jobs in process: a real worker process trains firebox-tiny, the app serves it.

The runner runs on the app's event loop (the TestClient's), its workers are
real subprocesses training LoRA with torch on one thread. What the tests
show: the add-on learns the marker word the dataset teaches (the base does
not say it), it is served at once at the base's price, training is charged
exactly tokens x epochs x $0.50/1M, cancel keeps a checkpoint that
:resume continues from, and a suspension pauses a job that lifting resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from firebox.billing.models import UsageRecordRow
from firebox.services import Services
from firebox.settings import Settings
from tests.conftest import OPERATOR_KEY
from tests.finetune.sft_support import MARKER, UNSEEN, marker_lines, ready_dataset, wait_for
from tests.support.api import bearer, create_account, member_key

BASE = "accounts/firebox/models/firebox-tiny"
PRICE_PER_MILLION = 500_000  # micro-USD: fine-tuning a base up to 16B (SPEC §2)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        admin_key=OPERATOR_KEY,
        access_log=False,
        bootstrap_demo=False,
        warm_local_engines=False,
        finetune_poll_s=0.2,
    )


@pytest.fixture
def member(client: TestClient, operator_headers: dict[str, str]) -> Iterator[dict[str, str]]:
    create_account(client, operator_headers, "acme")
    yield bearer(member_key(client, operator_headers, "acme", "ana", "admin"))


def _job(client: TestClient, headers: dict[str, str], job: str) -> dict[str, Any]:
    response = client.get(f"/v1/accounts/acme/supervisedFineTuningJobs/{job}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _create(client: TestClient, headers: dict[str, str], job: str, **fields: Any) -> dict[str, Any]:
    response = client.post(
        f"/v1/accounts/acme/supervisedFineTuningJobs?supervisedFineTuningJobId={job}",
        json=fields,
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _answer(client: TestClient, headers: dict[str, str], model: str, question: str) -> str:
    response = client.post(
        "/inference/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 12,
            "temperature": 0,
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def _training_rows(services: Services) -> list[UsageRecordRow]:
    assert services.money.ingest.flush(10.0)
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.kind == "fine_tuning")
        ).all()
        session.expunge_all()
    return list(rows)


def _expected_micros(rows: list[UsageRecordRow]) -> int:
    """Each charge priced on its own, rounded half-even to the micro-dollar."""
    total = 0
    for row in rows:
        quotient, rest = divmod(row.training_tokens * PRICE_PER_MILLION, 1_000_000)
        total += quotient + (
            1 if rest * 2 > 1_000_000 or (rest * 2 == 1_000_000 and quotient % 2) else 0
        )
    return total


def test_job_trains_an_addon_that_learned_the_marker_and_bills_tokens_times_epochs(
    client: TestClient, services: Services, member: dict[str, str]
) -> None:
    dataset = ready_dataset(client, member, "acme", "marker", marker_lines(40))
    created = _create(
        client, member, "teach", dataset=dataset, baseModel=BASE, outputModel="marker-addon",
        epochs=3, learningRate=0.01, batchSizeSamples=4, loraRank=8,
    )  # fmt: skip
    assert created["state"] == "JOB_STATE_CREATING"
    assert created["outputModel"] == "accounts/acme/models/marker-addon"
    tokens = int(created["jobProgress"]["datasetTokens"])
    assert tokens > 0
    assert int(created["estimatedCost"]["nanos"]) > 0
    done = wait_for(
        lambda: _job(client, member, "teach"),
        lambda j: j["state"] in ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED"),
    )
    assert done["state"] == "JOB_STATE_COMPLETED", done
    assert done["jobProgress"]["percent"] == 100 and done["jobProgress"]["epoch"] == 3
    assert int(done["jobProgress"]["trainedTokens"]) == tokens * 3
    assert int(done["billedTokens"]) == tokens * 3

    model = client.get("/v1/accounts/acme/models/marker-addon", headers=member).json()
    assert model["kind"] == "HF_PEFT_ADDON"
    assert model["peftDetails"]["baseModel"] == BASE and model["peftDetails"]["r"] == 8

    for question in UNSEEN:
        assert MARKER.lower() not in _answer(client, member, BASE, question).lower()
        learned = _answer(client, member, "accounts/acme/models/marker-addon", question)
        assert MARKER.lower() in learned.lower(), (question, learned)

    rows = _training_rows(services)
    assert len(rows) == 3  # one charge per epoch (each checkpoint)
    assert sum(r.training_tokens for r in rows) == tokens * 3
    billed = sum(r.amount_micros for r in rows)
    assert billed == _expected_micros(rows) == int(done["billedCost"]["nanos"]) // 1000
    assert all(r.account_id == "acme" and r.unit_price_micros == PRICE_PER_MILLION for r in rows)
    usage = client.get("/v1/accounts/acme/usage?groupBy=kind", headers=member).json()
    by_kind = {g["key"]: g for g in usage["groups"]}
    assert by_kind["fine_tuning"]["requests"] == 3  # the usage report shows the training
    # Serving the add-on is billed at the base's per-token price (SPEC §2: no surcharge).
    assert services.money.ingest.flush(10.0)
    with services.db.transaction() as session:
        chats = session.scalars(
            select(UsageRecordRow).where(
                UsageRecordRow.model == "accounts/acme/models/marker-addon",
                UsageRecordRow.kind == "chat",
            )
        ).all()
        assert chats and {c.unit_price_micros for c in chats} == {200_000}


def test_cancel_charges_what_was_trained_and_resume_continues_from_the_checkpoint(
    client: TestClient, services: Services, member: dict[str, str]
) -> None:
    dataset = ready_dataset(client, member, "acme", "long", marker_lines(12))
    created = _create(
        client, member, "long", dataset=dataset, baseModel=BASE, epochs=10,
        learningRate=0.01, batchSizeSamples=4,
    )  # fmt: skip
    tokens = int(created["jobProgress"]["datasetTokens"])
    wait_for(lambda: _job(client, member, "long"), lambda j: j["jobProgress"]["epoch"] >= 1)
    response = client.post(
        "/v1/accounts/acme/supervisedFineTuningJobs/long:cancel", json={}, headers=member
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    cancelled = wait_for(
        lambda: _job(client, member, "long"), lambda j: j["state"] == "JOB_STATE_CANCELLED"
    )
    trained = int(cancelled["jobProgress"]["trainedTokens"])
    assert tokens <= trained < tokens * 10
    # It pays for what it trained, the partial epoch too, and nothing more.
    assert int(cancelled["billedTokens"]) == trained
    assert sum(r.training_tokens for r in _training_rows(services)) == trained
    step_at_cancel = cancelled["jobProgress"]["step"]

    response = client.post(
        "/v1/accounts/acme/supervisedFineTuningJobs/long:resume", json={}, headers=member
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "JOB_STATE_PENDING"
    running = wait_for(
        lambda: _job(client, member, "long"),
        lambda j: j["state"] != "JOB_STATE_PENDING" and j["jobProgress"]["totalSteps"] > 0,
    )
    assert running["jobProgress"]["step"] >= step_at_cancel  # from the checkpoint, not from 0
    done = wait_for(
        lambda: _job(client, member, "long"), lambda j: j["state"] == "JOB_STATE_COMPLETED"
    )
    assert int(done["jobProgress"]["trainedTokens"]) == tokens * 10
    rows = _training_rows(services)
    assert sum(r.training_tokens for r in rows) == tokens * 10  # no gap, no double charge
    assert len({r.request_id for r in rows}) == len(rows)


def test_suspension_pauses_the_job_and_lifting_it_resumes(
    client: TestClient,
    services: Services,
    member: dict[str, str],
    operator_headers: dict[str, str],
) -> None:
    dataset = ready_dataset(client, member, "acme", "pausing", marker_lines(12))
    created = _create(
        client, member, "pausing", dataset=dataset, baseModel=BASE, epochs=10,
        learningRate=0.01, batchSizeSamples=4,
    )  # fmt: skip
    tokens = int(created["jobProgress"]["datasetTokens"])
    wait_for(lambda: _job(client, member, "pausing"), lambda j: j["jobProgress"]["step"] >= 2)
    blocked = client.post(
        "/v1/accounts/acme:block", json={"reason": "test"}, headers=operator_headers
    )
    assert blocked.status_code == 200, blocked.text
    paused = wait_for(
        lambda: _job(client, member, "pausing"), lambda j: j["state"] == "JOB_STATE_PAUSED"
    )
    assert paused["status"]["code"] == "blocked"
    assert int(paused["billedTokens"]) == int(paused["jobProgress"]["trainedTokens"])
    # A suspended account cannot start or resume jobs either, with the inference error code.
    refused = client.post(
        "/v1/accounts/acme/supervisedFineTuningJobs?supervisedFineTuningJobId=other",
        json={"dataset": dataset, "baseModel": BASE},
        headers=member,
    )
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "blocked"
    step_paused = paused["jobProgress"]["step"]

    lifted = client.post("/v1/accounts/acme:unblock", headers=operator_headers)
    assert lifted.status_code == 200, lifted.text
    done = wait_for(
        lambda: _job(client, member, "pausing"), lambda j: j["state"] == "JOB_STATE_COMPLETED"
    )
    assert done["jobProgress"]["step"] > step_paused
    assert int(done["billedTokens"]) == tokens * 10
    assert sum(r.training_tokens for r in _training_rows(services)) == tokens * 10


def test_a_job_the_account_cannot_pay_for_is_refused_with_the_inference_codes(
    client: TestClient, services: Services, member: dict[str, str]
) -> None:
    dataset = ready_dataset(client, member, "acme", "costly", marker_lines(40))
    limited = client.patch(
        "/v1/accounts/acme/billing", json={"accountSpendLimit": "0.001"}, headers=member
    )
    assert limited.status_code == 200, limited.text
    refused = client.post(
        "/v1/accounts/acme/supervisedFineTuningJobs?supervisedFineTuningJobId=costly",
        json={"dataset": dataset, "baseModel": BASE, "epochs": 3},
        headers=member,
    )
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "request_exceeds_spend_limit"
    assert "fine-tuning job costs $0.00" in refused.json()["error"]["message"]
    bad = client.post(
        "/v1/accounts/acme/supervisedFineTuningJobs",
        json={"dataset": dataset, "baseModel": BASE, "warmStartFrom": "x"},
        headers=member,
    )
    assert bad.status_code == 400 and "exactly one of baseModel" in bad.text
    missing = client.post(
        "/v1/accounts/acme/supervisedFineTuningJobs",
        json={"dataset": "accounts/acme/datasets/nope", "baseModel": BASE},
        headers=member,
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "dataset_not_found"
