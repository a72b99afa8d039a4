"""What only the Ray Serve driver has, on the session's real Ray: a gateway restart against a
running cluster, add-ons on a deployment's replicas, and Serve's own bounded queue (one
test, one replica start: each costs seconds of CPU)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping

import pytest

from firebox.deployments.drivers.base import DeploymentObservation, ReplicaState
from firebox.deployments.drivers.ray_rest import RayDashboard
from firebox.deployments.drivers.ray_serve import RayServeDriver
from firebox.errors import ServiceUnavailable
from firebox.inference.engine import GenerationRequest, SamplingParams, TextDelta

from ..support.ray_cluster import RayCluster
from .ray_fixtures import ray_options
from .support import TINY, TINY_LORA, target, tiny_lora

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DEADLINE_S = 180.0
Seen = Mapping[str, DeploymentObservation]


@contextlib.asynccontextmanager
async def driver_for(cluster: RayCluster, **options: object) -> AsyncIterator[RayServeDriver]:
    driver = RayServeDriver(
        RayDashboard(cluster.dashboard_url),
        cluster.serve_url,
        dataclasses.replace(ray_options(cluster), **options),  # type: ignore[arg-type]
        request_timeout_s=240.0,
    )
    try:
        yield driver
    finally:
        await driver.close()


async def until(driver: RayServeDriver, check: Callable[[Seen], bool], what: str) -> Seen:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        seen = await driver.observe()
        if check(seen):
            return seen
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last seen {seen!r}"
        await asyncio.sleep(0.1)


def ready(seen: Seen, name: str) -> list[str]:
    observed = seen.get(name)
    replicas = observed.replicas if observed is not None else ()
    return [r.replica_id for r in replicas if r.state is ReplicaState.READY]


def chat(adapter: str | None = None, max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(
        request_id=uuid.uuid4().hex,
        model=TINY,
        kind="chat",
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[{"role": "user", "content": "Say hello."}],
        adapter=adapter,
    )


async def answer(driver: RayServeDriver, name: str, request: GenerationRequest) -> str:
    events = [event async for event in driver.engine(name).generate(request)]
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_restarted_gateway_adopts_what_runs_and_serves_queue_is_bounded(
    ray_cluster: RayCluster,
) -> None:
    t = target(f"r{uuid.uuid4().hex[:8]}", fixed_replicas=1, addons=(tiny_lora(),))
    # One request at a time per replica and one queued per proxy: Serve's bounded queue.
    bounded = {"max_ongoing_requests": 1, "max_queued_requests": 1}
    async with driver_for(ray_cluster, **bounded) as first:
        await first.apply([t])
        seen = await until(first, lambda s: len(ready(s, t.name)) == 1, "the replica")
        (replica_id,) = ready(seen, t.name)
        first_ready = seen[t.name].replicas[0].ready_since
        assert first_ready is not None
        base = await answer(first, t.name, chat())
        addon = await answer(first, t.name, chat(adapter=TINY_LORA))
        assert base and addon and addon != base  # the add-on runs on the deployment's replica
    # The gateway is gone; Serve keeps the replica. A new one sees it as it is.
    async with driver_for(ray_cluster, **bounded) as second:
        seen = await second.observe()
        assert ready(seen, t.name) == [replica_id]
        adopted = seen[t.name].replicas[0].ready_since
        assert adopted is not None and adopted <= first_ready  # Serve's start: no gap unbilled
        await second.apply([t])  # the same desired set: nothing restarts
        seen = await second.observe()
        assert ready(seen, t.name) == [replica_id]

        # 5 at once onto one replica that runs one and queues one: the others are refused.
        results = await asyncio.gather(
            *(answer(second, t.name, chat(max_tokens=20)) for _ in range(5)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        served = [r for r in results if isinstance(r, str)]
        assert served and all(served)
        assert len(refused) >= 2, results
        for error in refused:
            assert isinstance(error, ServiceUnavailable), error
            assert error.code == "deployment_queue_full"
            assert error.headers.get("Retry-After") == "1"

        await second.apply([])  # not in the database any more: stopped, no orphan
        await until(second, lambda s: not s.get(t.name) or not s[t.name].replicas, "no replica")
        details = await second.dashboard.serve_details()
        assert not any(
            (app.get("deployed_app_config") or {}).get("args", {}).get("deployment") == t.name
            for app in (details.get("applications") or {}).values()
        )
