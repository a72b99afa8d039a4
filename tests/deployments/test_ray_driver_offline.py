"""The Ray Serve driver against a scripted dashboard: what it PUTs, how it reads Serve's
answers (replica states, ready times, failures, pending scheduling), no cluster needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firebox.clock import FakeClock
from firebox.deployments.drivers.base import ReplicaState
from firebox.deployments.drivers.ray_config import RayServeOptions, app_name, application
from firebox.deployments.drivers.ray_serve import RayServeDriver
from firebox.errors import FailedPrecondition, ServiceUnavailable

from .support import target

pytestmark = pytest.mark.anyio

NODES = [{"state": "ALIVE", "resources_total": {"GPU": 8, "accelerator_type:A100": 1}}]
START = datetime(2026, 1, 1, tzinfo=UTC)


class ScriptedDashboard:
    """Answers like the Ray dashboard; records the configs PUT."""

    url = "http://ray-head:8265"

    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {"applications": {}}

    async def nodes(self) -> list[dict[str, Any]]:
        return NODES

    async def put_serve_config(self, config: dict[str, Any]) -> None:
        self.puts.append(config)

    async def serve_details(self) -> dict[str, Any]:
        return self.details

    async def delete_serve(self) -> None:
        self.details = {"applications": {}}

    async def close(self) -> None:
        pass


def serve_app(t: Any, status: str, replicas: list[tuple[str, str]], **deployment: Any) -> Any:
    config = application(t, RayServeOptions())
    return {
        "status": status,
        "message": "",
        "deployed_app_config": config,
        "deployments": {
            "FireboxReplica": {
                "status": deployment.pop("dstatus", "HEALTHY"),
                "message": deployment.pop("message", ""),
                "target_num_replicas": deployment.pop("target", len(replicas)),
                "replicas": [
                    {
                        "replica_id": rid,
                        "actor_name": f"SERVE_REPLICA::{app_name(t.name)}#FireboxReplica#{rid}",
                        "state": state,
                        "start_time_s": START.timestamp(),
                    }
                    for rid, state in replicas
                ],
            }
        },
    }


def make(clock: FakeClock, dashboard: ScriptedDashboard, **kw: Any) -> RayServeDriver:
    return RayServeDriver(
        dashboard,  # type: ignore[arg-type]
        "http://ray-head:8001",
        RayServeOptions(),
        clock=clock,
        monotonic=lambda: kw.get("mono", 0.0),
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_apply_puts_only_changes_and_leaves_out_what_cannot_fit() -> None:
    dashboard, clock = ScriptedDashboard(), FakeClock(START)
    driver = make(clock, dashboard)
    fits, too_big = target("a"), target("b", accelerator_count=9, min_replicas=1)
    await driver.apply([fits, too_big])
    await driver.apply([fits, too_big])  # the same set: no second PUT
    assert len(dashboard.puts) == 1
    assert [app["name"] for app in dashboard.puts[0]["applications"]] == ["acme.a"]
    seen = await driver.observe()
    assert seen[too_big.name].failure is not None and "9" in (seen[too_big.name].failure or "")
    with pytest.raises(FailedPrecondition):
        await anext(driver.engine(too_big.name).generate(None))  # type: ignore[arg-type]
    await driver.apply([fits])  # the same Serve config (b was never in it): no PUT
    assert len(dashboard.puts) == 1
    await driver.apply([])
    assert len(dashboard.puts) == 2
    assert dashboard.puts[-1]["applications"] == []  # nothing left running: no orphans


async def test_replicas_are_ready_from_when_they_were_seen_running() -> None:
    dashboard, clock = ScriptedDashboard(), FakeClock(START + timedelta(minutes=5))
    driver = make(clock, dashboard)
    t = target("a")
    await driver.apply([t])
    dashboard.details = {
        "applications": {"acme.a": serve_app(t, "DEPLOYING", [("r1", "STARTING")])}
    }
    seen = await driver.observe()
    (replica,) = seen[t.name].replicas
    assert replica.state is ReplicaState.STARTING and replica.ready_since is None
    assert replica.replica_id.endswith("#r1")
    clock.advance(timedelta(seconds=7))
    dashboard.details = {"applications": {"acme.a": serve_app(t, "RUNNING", [("r1", "RUNNING")])}}
    (replica,) = (await driver.observe())[t.name].replicas
    assert replica.state is ReplicaState.READY and replica.ready_since == clock.now()
    clock.advance(timedelta(seconds=30))
    (again,) = (await driver.observe())[t.name].replicas
    assert again.ready_since == replica.ready_since  # stable across observations
    dashboard.details = {"applications": {"acme.a": serve_app(t, "RUNNING", [("r1", "STOPPING")])}}
    (stopping,) = (await driver.observe())[t.name].replicas
    assert stopping.state is ReplicaState.STOPPING


async def test_a_new_driver_adopts_running_replicas_at_serves_start_time() -> None:
    dashboard, clock = ScriptedDashboard(), FakeClock(START + timedelta(hours=1))
    t = target("a")
    dashboard.details = {
        "applications": {
            "acme.a": serve_app(t, "RUNNING", [("r1", "RUNNING")]),
            "someone-else": {"status": "RUNNING", "deployed_app_config": {"args": {}}},
        }
    }
    seen = await make(clock, dashboard).observe()  # before any apply: what runs is reported
    assert list(seen) == [t.name]
    (replica,) = seen[t.name].replicas
    assert replica.ready_since == START


async def test_failures_and_pending_scheduling_are_reported() -> None:
    dashboard, clock = ScriptedDashboard(), FakeClock(START)
    driver = make(clock, dashboard)
    a, b = target("a", max_replicas=3), target("b")
    await driver.apply([a, b])
    waiting = (
        "Deployment 'FireboxReplica' in application 'acme.a' has 2 replicas that have taken "
        "more than 30s to be scheduled. This may be due to waiting for the cluster to auto-scale"
    )
    dashboard.details = {
        "applications": {
            "acme.a": serve_app(
                a,
                "RUNNING",
                [("r1", "RUNNING"), ("r2", "STARTING"), ("r3", "STARTING")],
                message=waiting,
                target=3,
            ),
            "acme.b": {
                **serve_app(b, "DEPLOY_FAILED", [], dstatus="DEPLOY_FAILED"),
                "message": "replica constructor raised: weights not found",
            },
        }
    }
    seen = await driver.observe()
    assert seen[a.name].failure is None
    assert seen[a.name].extra["desired_replicas"] == "3"
    assert seen[a.name].extra["pending_replicas"] == "2"
    assert "to be scheduled" in seen[a.name].extra["pending"]
    assert "weights not found" in (seen[b.name].failure or "")


async def test_requests_to_a_deployment_at_zero_on_purpose_are_refused_at_once() -> None:
    dashboard, clock = ScriptedDashboard(), FakeClock(START)
    driver = make(clock, dashboard)
    t = target("a", fixed_replicas=0)
    await driver.apply([t])
    assert dashboard.puts[-1]["applications"] == []
    with pytest.raises(ServiceUnavailable) as refused:
        await anext(driver.engine(t.name).generate(None))  # type: ignore[arg-type]
    assert "scaled to zero" in refused.value.message
    with pytest.raises(ServiceUnavailable):  # a name the driver was never given
        await anext(driver.engine("accounts/acme/deployments/nope").generate(None))  # type: ignore[arg-type]
    await driver.close()


async def test_the_dashboard_client_sends_the_token_and_maps_failures() -> None:
    import httpx
    import orjson

    from firebox.deployments.drivers.ray_rest import RayDashboard, RayDashboardError

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/v0/nodes":
            rows = [{**NODES[0]}, {"state": "DEAD", "resources_total": {"GPU": 8}}]
            return httpx.Response(200, json={"data": {"result": {"result": rows}}})
        if request.method == "PUT":
            return httpx.Response(400, text="Invalid config: max_replicas must be positive")
        return httpx.Response(200, json={"applications": {}})

    dashboard = RayDashboard(
        "http://head:8265/", token="s3cret", transport=httpx.MockTransport(answer)
    )
    try:
        assert await dashboard.nodes() == NODES  # the dead node is no capacity
        assert await dashboard.serve_details() == {"applications": {}}
        with pytest.raises(RayDashboardError) as refused:
            await dashboard.put_serve_config({"applications": []})
        assert refused.value.http_status == 503 and "max_replicas" in refused.value.message
        assert orjson.loads(seen[-1].content) == {"applications": []}
        assert all(r.headers["authorization"] == "Bearer s3cret" for r in seen)
    finally:
        await dashboard.close()
    unreachable = RayDashboard("http://127.0.0.1:9")
    try:
        with pytest.raises(RayDashboardError) as down:
            await unreachable.serve_details()
        assert "FIREBOX_RAY_DASHBOARD_URL" in down.value.message
    finally:
        await unreachable.close()
