"""The local driver's bookkeeping: replicas and deployments as it runs them, and the
``TextEngine`` a deployment presents to serving (each request on a ready replica)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import anyio

from firebox.deployments.autoscaling import ScalerState
from firebox.deployments.drivers.base import DeploymentTarget, ReplicaState
from firebox.inference.engine import (
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    TextEngine,
)

DEFAULT_CAPABILITIES = EngineCapabilities(params=frozenset())


@dataclass(eq=False)
class LocalReplica:
    replica_id: str
    spec: tuple[object, ...]
    state: ReplicaState = ReplicaState.STARTING
    engine: TextEngine | None = None
    ready_since: datetime | None = None
    ongoing: int = 0
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class LocalDeployment:
    target: DeploymentTarget
    replicas: dict[str, LocalReplica] = field(default_factory=dict)
    desired: int = 0
    scaler: ScalerState = field(default_factory=ScalerState)
    waiting: int = 0
    failure: str | None = None
    failed_spec: tuple[object, ...] | None = None
    removed: bool = False  # no longer in the desired set: draining out
    capabilities: EngineCapabilities | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def spec(self) -> tuple[object, ...]:
        """What a replica is made from; a change of it replaces the replicas."""
        t = self.target
        return (t.base_model.name, t.base_model.engine, t.accelerator_type, t.accelerator_count,
                t.max_context_length)  # fmt: skip

    def live(self) -> list[LocalReplica]:
        """Replicas that count toward the desired number (not stopping, current spec)."""
        return [
            r
            for r in self.replicas.values()
            if r.state is not ReplicaState.STOPPING and r.spec == self.spec
        ]

    def pick(self) -> LocalReplica | None:
        ready = [r for r in self.live() if r.state is ReplicaState.READY and r.engine is not None]
        return min(ready, key=lambda r: r.ongoing) if ready else None

    def load(self) -> float:
        return float(sum(r.ongoing for r in self.replicas.values()) + self.waiting)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Acquirer(Protocol):
    """What a deployment's engine needs of its driver."""

    async def acquire(self, name: str) -> tuple[LocalDeployment, LocalReplica]: ...

    def release(self, dep: LocalDeployment, replica: LocalReplica) -> None: ...

    def capabilities_of(self, name: str) -> EngineCapabilities: ...


class DeploymentEngine:
    """The ``TextEngine`` of one deployment: each request on its least busy ready replica."""

    def __init__(self, driver: Acquirer, name: str) -> None:
        self._driver = driver
        self._name = name

    @property
    def capabilities(self) -> EngineCapabilities:
        return self._driver.capabilities_of(self._name)

    @capabilities.setter
    def capabilities(self, value: EngineCapabilities) -> None:
        raise AttributeError("a deployment's capabilities are its replicas'")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        dep, replica = await self._driver.acquire(self._name)
        try:
            assert replica.engine is not None
            events = replica.engine.generate(request)
            try:
                async for event in events:
                    yield event
            finally:
                with anyio.CancelScope(shield=True):
                    await events.aclose()  # type: ignore[attr-defined]
        finally:
            self._driver.release(dep, replica)

    async def close(self) -> None:
        """Nothing: the replicas belong to the driver."""
