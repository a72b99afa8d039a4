"""The runtime in one gateway: controller, routing, GPU metering, suspension (both stores)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from firebox.billing.models import UsageRecordRow
from firebox.catalog.deployed_models import DeployedModelRow
from firebox.catalog.models import ModelRow
from firebox.clock import FakeClock
from firebox.services import Services
from firebox.settings import Settings
from tests.support.api import bearer, create_account, member_key

from .support import TINY, TINY_LORA, insert_deployment, read_deployment, until

NAME = "accounts/acme/deployments/d1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The package's settings with the controller running."""
    return settings.model_copy(update={"deployment_controller": True})


@pytest.fixture
def acme(client: TestClient, operator_headers: dict[str, str]) -> dict[str, str]:
    create_account(client, operator_headers, "acme", plan="ENTERPRISE")
    return bearer(member_key(client, operator_headers, "acme", "ann", "user"))


def chat(client: TestClient, headers: dict[str, str], model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return client.post("/v1/chat/completions", json=body | extra, headers=headers)


def state_of(services: Services, pk: int, state: str, ready: int | None = None) -> bool:
    row = read_deployment(services.db, pk)
    return row.state == state and (ready is None or row.ready_replicas == ready)


def place_addon(services: Services, clock: FakeClock, deployment: str) -> str:
    """A deployedModels row loading the tiny LoRA onto ``deployment`` (as the API would)."""
    with services.db.transaction() as session:
        addon = session.scalar(select(ModelRow).where(ModelRow.model_id == "firebox-tiny-lora"))
        assert addon is not None
        session.add(
            DeployedModelRow(
                account_id="acme",
                deployed_model_id="upper",
                model_pk=addon.pk,
                state="DEPLOYING",
                deployment=deployment,
                create_time=clock.now(),
                update_time=clock.now(),
            )
        )
    return "accounts/acme/deployedModels/upper"


def gpu_rows(services: Services) -> list[UsageRecordRow]:
    assert services.money.ingest.flush(10.0)
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.kind == "deployment")
        ).all()
        session.expunge_all()
    return list(rows)


def test_requests_reach_the_deployment_by_all_three_names(
    services: Services,
    client: TestClient,
    clock: FakeClock,
    acme: dict[str, str],
    operator_headers: dict[str, str],
) -> None:
    pk = insert_deployment(services.db, "acme", "d1", clock.now())
    deployed = place_addon(services, clock, NAME)
    assert services.deployment_runtime is not None
    controller = services.deployment_runtime.controller
    controller.poke()
    until(lambda: state_of(services, pk, "READY"), "READY")
    until(lambda: deployed in controller.routes.deployed, "the add-on placed")

    for model in (NAME, f"{TINY}#{NAME}", f"firebox-tiny#{NAME}", "firebox-tiny#d1", deployed,
                  f"{TINY_LORA}#{NAME}"):  # fmt: skip
        answer = chat(client, acme, model)
        assert answer.status_code == 200, (model, answer.text)
        assert answer.json()["usage"]["completion_tokens"] > 0
    streamed = chat(client, acme, NAME, stream=True)
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text

    # Per-token usage of deployment traffic costs nothing: GPU time is billed instead.
    assert services.money.ingest.flush(10.0)
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.deployment == NAME)
        ).all()
        assert rows and all(r.amount_micros == 0 for r in rows if r.kind == "chat")

    # Deployment traffic is never rate-limited (SPEC §5); serverless traffic is.
    limited = client.patch(
        "/v1/accounts/acme", json={"rateLimitRequestsPerMinute": 1}, headers=operator_headers
    )
    assert limited.status_code == 200, limited.text
    assert [chat(client, acme, NAME).status_code for _ in range(3)] == [200, 200, 200]
    assert 429 in [chat(client, acme, TINY).status_code for _ in range(3)]

    # Another account's deployment is a 404; a model not on the deployment a 400.
    create_account(client, operator_headers, "other")
    other = bearer(member_key(client, operator_headers, "other", "bob", "user"))
    refused = chat(client, other, NAME)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "deployment_not_found"
    assert chat(client, other, deployed).status_code == 404
    wrong = chat(client, acme, f"accounts/firebox/models/other#{NAME}")
    assert wrong.status_code == 400
    assert chat(client, acme, "accounts/acme/deployments/nope").status_code == 404


def test_gpu_time_is_billed_from_ready_to_stopped(
    services: Services, client: TestClient, clock: FakeClock, acme: dict[str, str]
) -> None:
    pk = insert_deployment(
        services.db, "acme", "d1", clock.now(), min_replica_count=1, accelerator_count=2
    )
    assert services.deployment_runtime is not None
    services.deployment_runtime.controller.poke()
    until(lambda: state_of(services, pk, "READY", ready=1), "a ready replica")
    assert gpu_rows(services) == []  # booting and ready at this instant: nothing yet
    clock.advance(timedelta(seconds=150))
    services.deployment_runtime.controller.poke()
    until(lambda: len(gpu_rows(services)) >= 2, "two whole intervals billed while running")
    with services.db.transaction() as session:
        row = session.get(type(read_deployment(services.db, pk)), pk)
        assert row is not None
        row.delete_time = clock.now()
    services.deployment_runtime.controller.poke()
    until(lambda: state_of(services, pk, "DELETED"), "DELETED")
    until(lambda: sum(r.gpu_milliseconds for r in gpu_rows(services)) == 300_000, "the rest")
    rows = gpu_rows(services)
    assert {r.deployment for r in rows} == {NAME} and {r.gpu_type for r in rows} == {"A100_80GB"}
    # 2 GPUs x 150 s x $3.89/h = $0.324167, each interval rounded on its own.
    assert abs(sum(r.amount_micros for r in rows) - 324_167) <= len(rows)


def test_a_suspension_scales_to_zero_and_lifting_it_restores(
    services: Services, client: TestClient, clock: FakeClock, acme: dict[str, str]
) -> None:
    pk = insert_deployment(services.db, "acme", "d1", clock.now(), min_replica_count=1)
    assert services.deployment_runtime is not None
    services.deployment_runtime.controller.poke()
    until(lambda: state_of(services, pk, "READY", ready=1), "a ready replica")
    suspension = services.limits_suspension
    suspension.raise_reason("acme", "BLOCKED_BY_ABUSE_RULE", "test")
    until(lambda: read_deployment(services.db, pk).replica_count == 0, "scaled to zero")
    row = read_deployment(services.db, pk)
    assert row.suspended and row.suspended_replicas == 1
    assert chat(client, acme, NAME).status_code in (402, 403)  # the suspension refuses first
    suspension.lift("acme", "BLOCKED_BY_ABUSE_RULE")
    until(lambda: state_of(services, pk, "READY", ready=1), "restored")
    row = read_deployment(services.db, pk)
    assert not row.suspended and row.suspended_replicas is None
    assert chat(client, acme, NAME).status_code == 200
