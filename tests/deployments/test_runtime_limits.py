"""Restart reconciliation, the spend limit ahead of GPU time, and a full wake queue."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from firebox.app import create_app
from firebox.billing.models import UsageRecordRow
from firebox.clock import FakeClock, SystemClock
from firebox.deployments.drivers.base import DeploymentTarget
from firebox.deployments.drivers.local import LocalDriver
from firebox.errors import ServiceUnavailable
from firebox.inference.engine import (
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    UsageReport,
)
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.support.api import create_account

from .support import insert_deployment, read_deployment, target, until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deployment_controller": True})


def gpu_rows(services: Services) -> list[UsageRecordRow]:
    assert services.money.ingest.flush(10.0)
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.kind == "deployment")
        ).all()
        session.expunge_all()
    return list(rows)


def test_a_restart_reconciles_and_never_bills_twice(
    settings: Settings,
    database: Database,
    clock: FakeClock,
    services: Services,
    client: TestClient,
    operator_headers: dict[str, str],
) -> None:
    create_account(client, operator_headers, "acme", plan="ENTERPRISE")
    pk = insert_deployment(services.db, "acme", "d1", clock.now(), min_replica_count=1)
    assert services.deployment_runtime is not None
    services.deployment_runtime.controller.poke()
    until(lambda: read_deployment(database, pk).ready_replicas == 1, "a ready replica")
    clock.advance(timedelta(seconds=90))
    until(lambda: len(gpu_rows(services)) >= 1, "the first interval billed")
    client.__exit__(None, None, None)  # the gateway stops: its local replicas with it

    clock.advance(timedelta(seconds=30))  # down for 30 s: nothing billed
    again = build_services(settings, db=database, clock=clock)
    initialize(again)
    with TestClient(create_app(again), raise_server_exceptions=False):
        until(lambda: read_deployment(database, pk).ready_replicas == 1, "running again")
        clock.advance(timedelta(seconds=45))
    # The stop charged the new replica's part interval and drained the ledger queue.
    with database.transaction() as session:
        rows = list(
            session.scalars(select(UsageRecordRow).where(UsageRecordRow.kind == "deployment"))
        )
        session.expunge_all()
    assert len({r.request_id for r in rows}) == len(rows)
    # 90 s before the restart, 45 s after; the 30 s down are not billed.
    assert sum(r.gpu_milliseconds for r in rows) == 135_000
    assert len({r.request_id.rsplit(":", 1)[0] for r in rows}) == 2  # two replicas


def test_a_stop_during_the_write_back_still_bills_the_replica_it_published(
    settings: Settings,
    database: Database,
    clock: FakeClock,
    services: Services,
    client: TestClient,
    operator_headers: dict[str, str],
) -> None:
    # The pass that writes "1 ready replica" is held in its write-back until the gateway's
    # stop cancels it: the window a loaded machine opened at random (seen once under
    # stress-ng, 90 of 135 GPU-seconds billed). The replica the row shows must be billed.
    create_account(client, operator_headers, "acme", plan="ENTERPRISE")
    pk = insert_deployment(services.db, "acme", "d1", clock.now(), min_replica_count=1)
    runtime = services.deployment_runtime
    assert runtime is not None
    controller = runtime.controller
    write_back = controller._write_back

    def held_write_back(*args: Any) -> None:
        write_back(*args)
        if read_deployment(database, pk).ready_replicas != 1:
            return
        deadline = time.monotonic() + 60
        task = controller._task
        while task is not None and not task.cancelling() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the stop cancels this pass

    controller._write_back = held_write_back  # type: ignore[method-assign]
    controller.poke()
    until(lambda: read_deployment(database, pk).ready_replicas == 1, "a ready replica")
    clock.advance(timedelta(seconds=45))
    client.__exit__(None, None, None)  # cancels the held pass; its replicas stop with it
    rows = gpu_rows(services)
    assert sum(r.gpu_milliseconds for r in rows) == 45_000


def test_gpu_time_that_would_pass_the_cap_suspends_and_scales_to_zero(
    services: Services, client: TestClient, clock: FakeClock, operator_headers: dict[str, str]
) -> None:
    # A new account has $1 of credit and no card: its cap is $1. Eight A100s cost
    # $0.5187 a minute: the first minute fits, the second would not.
    create_account(client, operator_headers, "acme", plan="ENTERPRISE")
    pk = insert_deployment(
        services.db, "acme", "d1", clock.now(), min_replica_count=1, accelerator_count=8,
        max_replica_count=1,
    )  # fmt: skip
    assert services.deployment_runtime is not None
    controller = services.deployment_runtime.controller
    controller.poke()
    until(lambda: read_deployment(services.db, pk).ready_replicas == 1, "a ready replica")
    checks = controller.spend_checks
    until(lambda: controller.spend_checks >= checks + 2, "two spend checks")
    assert services.limits_suspension.reasons("acme") == ()
    clock.advance(timedelta(seconds=60))
    until(lambda: read_deployment(services.db, pk).suspended, "the account suspended")
    assert services.limits_suspension.reasons("acme") == ("CREDIT_DEPLETED",)
    until(lambda: read_deployment(services.db, pk).replica_count == 0, "scaled to zero")
    spent = sum(r.amount_micros for r in gpu_rows(services))
    assert 0 < spent <= 1_000_000


class _Slow:
    """An engine whose replicas boot only when told to (a cold start held open)."""

    capabilities = EngineCapabilities(params=frozenset())

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        yield TextDelta(0, "hi", token_count=1)
        yield UsageReport(1, 1)

    async def close(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_full_wake_queue_answers_503_with_retry_after() -> None:
    booted = threading.Event()

    def make(_: DeploymentTarget) -> _Slow:
        booted.wait(60)
        return _Slow()

    driver = LocalDriver(
        make, SystemClock(), capacity={"NVIDIA_A100_80GB": 8}, tick_s=0.05, queue_limit=2
    )
    t = target()
    request = GenerationRequest("r", "m", "chat", SamplingParams(), messages=[])
    results: list[object] = []

    async def call() -> None:
        results.append([e async for e in driver.engine(t.name).generate(request)])

    try:
        await driver.apply([t])
        async with anyio.create_task_group() as group:
            group.start_soon(call)
            group.start_soon(call)
            with anyio.fail_after(60):  # both callers wait behind the cold start
                while (await driver.observe())[t.name].ongoing_requests < 2:
                    await anyio.sleep(0.01)
            with pytest.raises(ServiceUnavailable) as full:
                await call()
            assert full.value.code == "deployment_queue_full"
            assert full.value.headers["Retry-After"].isdigit()
            booted.set()
        assert len(results) == 2  # the queued ones were served once the replica was up
    finally:
        booted.set()
        await driver.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
