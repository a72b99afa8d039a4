"""The contract every deployment driver keeps, run against each kind in ``DRIVERS``.

Declarative apply, observation of replicas with their ready time, a request
waking a deployment at zero, load driving a second replica, idleness driving
it back to zero, fixed counts, no orphans once a deployment leaves the set,
and a clear failure for a replica that can never fit the cluster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from firebox.deployments.drivers.base import (
    DeploymentDriver,
    DeploymentObservation,
    DeploymentTarget,
    ReplicaState,
)
from firebox.deployments.metering import GpuMeter
from firebox.errors import FireboxError
from firebox.inference.engine import (
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    UsageReport,
)
from firebox.inference.metering import CollectingUsageSink

from .conftest import DriverFactory
from .support import TINY, target

pytestmark = pytest.mark.anyio

CAPACITY = {"NVIDIA_A100_80GB": 8, "NVIDIA_H100_80GB": 8}
DEADLINE_S = 180.0  # generous: engines load on a shared, loaded machine
SKEW = timedelta(seconds=1)  # a cluster's clock against ours

Seen = Mapping[str, DeploymentObservation]


def chat(max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        model=TINY,
        kind="chat",
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[{"role": "user", "content": "Say hello."}],
    )


async def collect(events: AsyncIterator[GenerationEvent]) -> list[GenerationEvent]:
    return [event async for event in events]


class Metered:
    """Every observation of a test, fed to the GPU meter as the controller would."""

    def __init__(self, t: DeploymentTarget) -> None:
        self.sink = CollectingUsageSink()
        self.meter = GpuMeter(self.sink, interval_s=60)
        self.targets = {t.name: t}
        self.early: list[str] = []  # replicas reported ready in the future

    def observe(self, seen: Seen) -> None:
        now = datetime.now(UTC)
        for observed in seen.values():
            for replica in observed.replicas:
                if replica.ready_since is not None and replica.ready_since > now + SKEW:
                    self.early.append(replica.replica_id)
        self.meter.observe(self.targets, seen, now)

    def billed_ms(self) -> int:
        return sum(r.gpu_milliseconds for r in self.sink.records())


async def until(
    driver: DeploymentDriver,
    check: Callable[[Seen], bool],
    what: str,
    metered: Metered | None = None,
) -> Seen:
    """Observe until ``check`` holds (a generous deadline, never a fixed sleep)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        seen = await driver.observe()
        if metered is not None:
            metered.observe(seen)
        if check(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen {seen!r}")
        await anyio.sleep(0.05)


def ready(seen: Seen, name: str) -> int:
    observed = seen.get(name)
    if observed is None:
        return 0
    return sum(1 for r in observed.replicas if r.state is ReplicaState.READY)


def running(seen: Seen, name: str) -> int:
    observed = seen.get(name)
    return len(observed.replicas) if observed is not None else 0


def unique(base: DeploymentTarget) -> DeploymentTarget:
    """``base`` under a fresh id, so runs against a shared cluster never collide."""
    deployment_id = f"c{uuid.uuid4().hex[:10]}"
    return replace(
        base,
        deployment_id=deployment_id,
        name=f"accounts/{base.account_id}/deployments/{deployment_id}",
    )


async def test_wake_load_idle_and_wake_again(make_driver: DriverFactory) -> None:
    t = unique(target(max_replicas=2, target_ongoing_requests=1.0, scale_to_zero_window_s=1.0))
    metered = Metered(t)
    started = time.monotonic()
    async with make_driver(CAPACITY) as driver:
        await driver.apply([t])
        seen = await until(driver, lambda s: t.name in s, "the deployment to be observed", metered)
        assert ready(seen, t.name) == 0  # min 0: nothing runs before the first request
        engine = driver.engine(t.name)

        events = await collect(engine.generate(chat()))  # wakes it, waits, answers
        assert any(isinstance(e, TextDelta) and e.text for e in events)
        assert isinstance(events[-1], UsageReport) and events[-1].completion_tokens > 0
        seen = await driver.observe()
        replicas = [r for r in seen[t.name].replicas if r.state is ReplicaState.READY]
        assert len(replicas) == 1 and replicas[0].ready_since is not None
        first_id = replicas[0].replica_id

        # Two requests held open: the load asks for a second replica.
        holds = [engine.generate(chat(max_tokens=200)) for _ in range(2)]
        try:
            for hold in holds:
                await hold.__anext__()
            seen = await until(driver, lambda s: ready(s, t.name) == 2, "a second replica", metered)
            ids = {r.replica_id for r in seen[t.name].replicas}
            assert first_id in ids and len(ids) == 2
        finally:
            for hold in holds:
                await hold.aclose()  # type: ignore[attr-defined]

        # Idle past the scale-to-zero window: nothing runs.
        await until(driver, lambda s: running(s, t.name) == 0, "scale to zero", metered)

        # A request at zero wakes it again, on a new replica.
        events = await collect(engine.generate(chat()))
        assert isinstance(events[-1], UsageReport)
        seen = await driver.observe()
        assert ready(seen, t.name) == 1
        assert all(r.replica_id not in ids for r in seen[t.name].replicas)

        metered.observe(await driver.observe())
        await driver.apply([])
        await until(driver, lambda s: running(s, t.name) == 0, "no replica left", metered)
        # GPU time as the meter bills it from the driver's reports: some, never more than
        # two replicas for the whole test, and no replica ready before it was.
        billed = metered.billed_ms()
        assert 0 < billed <= (time.monotonic() - started) * 2 * 1000 + 2000
        assert metered.early == []


async def test_fixed_counts_override_autoscaling(make_driver: DriverFactory) -> None:
    t = unique(target(max_replicas=1, fixed_replicas=2))
    async with make_driver(CAPACITY) as driver:
        await driver.apply([t])
        await until(driver, lambda s: ready(s, t.name) == 2, "the two fixed replicas")
        await driver.apply([replace(t, fixed_replicas=0)])
        await until(driver, lambda s: running(s, t.name) == 0, "the fixed zero")
        with pytest.raises(FireboxError) as refused:  # scaled to zero on purpose: no wake
            await collect(driver.engine(t.name).generate(chat()))
        assert refused.value.http_status in (404, 503)
        await driver.apply([])


async def test_a_replica_bigger_than_the_cluster_fails_clearly(make_driver: DriverFactory) -> None:
    t = unique(target(min_replicas=1, accelerator_count=16))
    async with make_driver(CAPACITY) as driver:
        await driver.apply([t])
        seen = await until(
            driver, lambda s: t.name in s and s[t.name].failure is not None, "a failure"
        )
        assert "16" in (seen[t.name].failure or "")
        assert ready(seen, t.name) == 0
        await driver.apply([])
        await until(driver, lambda s: running(s, t.name) == 0, "nothing left")


async def test_capacity_names_the_accelerator_types(make_driver: DriverFactory) -> None:
    async with make_driver(CAPACITY) as driver:
        capacity = await driver.capacity()
        assert capacity.get("NVIDIA_A100_80GB", 0) >= 1
