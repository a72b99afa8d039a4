"""The whole product on Ray Serve: ``FIREBOX_DEPLOYMENT_DRIVER=ray_serve`` against the
session's real Ray cluster; the gateway's controller applies, routes and meters GPU time."""

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
from firebox.deployments.drivers.ray_serve import RayServeDriver
from firebox.services import Services
from firebox.settings import Settings
from tests.support.api import bearer, create_account, member_key

from ..support.ray_cluster import RayCluster
from .support import TINY, TINY_LORA, insert_deployment, read_deployment, until

NAME = "accounts/acme/deployments/ray1"

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(settings: Settings, ray_cluster: RayCluster) -> Settings:
    """The package's settings with the controller on, running replicas on Ray Serve."""
    return settings.model_copy(
        update={
            "deployment_controller": True,
            "deployment_driver": "ray_serve",
            "ray_dashboard_url": ray_cluster.dashboard_url,
            "ray_serve_url": ray_cluster.serve_url,
            "ray_serve_host": "127.0.0.1",
            "ray_serve_port": ray_cluster.serve_port,
            "deployment_wake_timeout_s": 240.0,
        }
    )


@pytest.fixture
def acme(client: TestClient, operator_headers: dict[str, str]) -> dict[str, str]:
    create_account(client, operator_headers, "acme", plan="ENTERPRISE")
    return bearer(member_key(client, operator_headers, "acme", "ann", "user"))


def chat(client: TestClient, headers: dict[str, str], model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return client.post("/v1/chat/completions", json=body | extra, headers=headers)


def gpu_rows(services: Services) -> list[UsageRecordRow]:
    assert services.money.ingest.flush(10.0)
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.kind == "deployment")
        ).all()
        session.expunge_all()
    return list(rows)


def test_a_deployment_on_ray_serves_all_names_and_bills_gpu_time(
    services: Services, client: TestClient, clock: FakeClock, acme: dict[str, str]
) -> None:
    runtime = services.deployment_runtime
    assert runtime is not None and isinstance(runtime.driver, RayServeDriver)
    pk = insert_deployment(services.db, "acme", "ray1", clock.now(), min_replica_count=1)
    with services.db.transaction() as session:  # the tiny LoRA loaded onto the deployment
        addon = session.scalar(select(ModelRow).where(ModelRow.model_id == "firebox-tiny-lora"))
        assert addon is not None
        session.add(
            DeployedModelRow(
                account_id="acme",
                deployed_model_id="upper",
                model_pk=addon.pk,
                state="DEPLOYING",
                deployment=NAME,
                create_time=clock.now(),
                update_time=clock.now(),
            )
        )
    runtime.controller.poke()
    until(
        lambda: (
            read_deployment(services.db, pk).state == "READY"
            and read_deployment(services.db, pk).ready_replicas == 1
        ),
        "READY with its replica on Ray",
    )
    deployed = "accounts/acme/deployedModels/upper"
    until(lambda: deployed in runtime.controller.routes.deployed, "the add-on placed")
    runtime.controller.poke()  # the add-on's placement rolls the application (new revision)
    until(lambda: read_deployment(services.db, pk).ready_replicas == 1, "the rolled replica")

    for model in (NAME, f"{TINY}#{NAME}", deployed, f"{TINY_LORA}#{NAME}"):
        answer = until(
            lambda m=model: (r := chat(client, acme, m)).status_code == 200 and r,  # type: ignore[misc]
            f"an answer from {model}",
        )
        assert answer.json()["usage"]["completion_tokens"] > 0
    streamed = chat(client, acme, NAME, stream=True)
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text

    # GPU time: from the replica's ready moment, by the meter's intervals, until it stops.
    clock.advance(timedelta(seconds=150))
    runtime.controller.poke()
    until(lambda: len(gpu_rows(services)) >= 2, "whole intervals billed while running")
    with services.db.transaction() as session:
        row = session.get(type(read_deployment(services.db, pk)), pk)
        assert row is not None
        row.delete_time = clock.now()
    runtime.controller.poke()
    until(lambda: read_deployment(services.db, pk).state == "DELETED", "DELETED")
    rows = gpu_rows(services)
    assert {r.deployment for r in rows} == {NAME}
    billed_ms = sum(r.gpu_milliseconds for r in rows)
    assert 150_000 <= billed_ms <= 150_000 + 60_000, billed_ms  # the clock moved 150 s
