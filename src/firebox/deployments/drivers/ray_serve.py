"""The Ray Serve driver: deployments as Serve applications on a Ray cluster.

Ray Serve is the distributed engine (replica placement on GPU nodes,
request-based autoscaling, scale to zero and wake on request, a proxy with a
bounded queue); this driver only translates. Everything goes over HTTP, so
the gateway's event loop never blocks on a Ray call and the gateway needs no
``ray`` install:

- ``apply`` builds the whole Serve config from the targets (``ray_config``)
  and ``PUT``s it to the dashboard when it differs from the last one applied
  (and again every ``reapply_s``, which also repairs a cluster that lost it);
  a deployment whose replica cannot fit on any node of its accelerator type,
  or whose minimum needs more accelerators than the cluster has, is left out
  and reported ``failure`` (Serve would keep it DEPLOYING forever);
- ``observe`` reads ``GET /api/serve/applications/``: replicas and their
  states, Serve's failures and pending-scheduling messages; the replica id is
  Serve's actor name (unique for the replica's life). ``ready_since`` is when
  this driver first saw the replica RUNNING after it saw it starting; a
  replica already RUNNING when the driver (re)starts uses Serve's start time;
- ``engine(name)`` reaches the deployment through the Serve proxy at
  ``{serve_url}/{account}/{deployment}/v1`` with Firebox's upstream engine;
  requests beyond ``max_in_flight`` per deployment, or refused by Serve's
  bounded queue, are a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from firebox.clock import Clock, SystemClock
from firebox.deployments.drivers.base import (
    DeploymentObservation,
    DeploymentTarget,
    ReplicaObservation,
    ReplicaState,
)
from firebox.deployments.drivers.ray_config import (
    SERVE_DEPLOYMENT,
    RayServeOptions,
    ray_accelerator,
    route_prefix,
    serve_config,
)
from firebox.deployments.drivers.ray_rest import RayDashboard
from firebox.errors import FailedPrecondition, InvalidArgument, RateLimited, ServiceUnavailable
from firebox.inference.engine import (
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    TextEngine,
)
from firebox.inference.upstream import UpstreamEngine

KIND = "ray_serve"

# What a replica's ReplicaServer passes on to Firebox's local engine.
DEPLOYMENT_CAPABILITIES = EngineCapabilities(
    params=frozenset(
        {
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "stop",
            "n",
            "seed",
            "logprobs",
            "top_logprobs",
            "echo",
        }
    )
)

_SERVE_STARTING = frozenset({"STARTING", "RECOVERING", "PENDING_MIGRATION"})
_SCHEDULING_HINT = "to be scheduled"  # Serve's message when replicas wait for resources


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def capacity_by_type(nodes: Sequence[Mapping[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """GPUs of each Ray accelerator type: (cluster total, the most on one node)."""
    total: dict[str, int] = {}
    largest: dict[str, int] = {}
    for node in nodes:
        resources = node.get("resources_total") or {}
        gpus = int(resources.get("GPU", 0))
        for key in resources:
            if key.startswith("accelerator_type:"):
                kind = key.removeprefix("accelerator_type:")
                total[kind] = total.get(kind, 0) + gpus
                largest[kind] = max(largest.get(kind, 0), gpus)
    return total, largest


def capacity_failure(
    target: DeploymentTarget,
    options: RayServeOptions,
    total: Mapping[str, int],
    largest: Mapping[str, int],
) -> str | None:
    """Why ``target`` can never be scheduled on the cluster as it is, or None."""
    kind = ray_accelerator(target.accelerator_type, options.accelerators)
    per_replica = target.accelerator_count
    on_one_node = largest.get(kind, 0)
    if per_replica > on_one_node:
        return (
            f"No node of the Ray cluster has {per_replica} {target.accelerator_type} "
            f"accelerators for one replica (the most on one node: {on_one_node}). Lower "
            "acceleratorCount, or the operator adds such nodes."
        )
    wanted = target.fixed_replicas
    if wanted is None:
        wanted = target.autoscaling.min_replicas
    if wanted * per_replica > total.get(kind, 0):
        return (
            f"{wanted} replicas x {per_replica} {target.accelerator_type} need "
            f"{wanted * per_replica} accelerators; the Ray cluster has "
            f"{total.get(kind, 0)}. Lower the replica count, or the operator adds nodes."
        )
    return None


class DeploymentEngine:
    """A deployment's replicas behind the Serve proxy, as a ``TextEngine``."""

    capabilities = DEPLOYMENT_CAPABILITIES

    def __init__(
        self,
        name: str,
        upstream: UpstreamEngine,
        *,
        max_in_flight: int,
        retry_after_s: int,
        blocked: Callable[[], str | None],
        start_timeout_s: float = 120.0,
    ) -> None:
        self.name = name
        self._start_timeout_s = start_timeout_s
        self.in_flight = 0
        self._upstream = upstream
        self._max_in_flight = max_in_flight
        self._retry_after = {"Retry-After": str(retry_after_s)}
        self._blocked = blocked

    def _busy(self, why: str, code: str) -> ServiceUnavailable:
        return ServiceUnavailable(why, code=code, headers=dict(self._retry_after))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        reason = self._blocked()
        if reason is not None:
            raise self._busy(reason, "deployment_unavailable")
        if self.in_flight >= self._max_in_flight:
            raise self._busy(
                f"Deployment {self.name!r} has {self.in_flight} requests waiting or running, "
                "its queue's limit; retry after the Retry-After delay.",
                "deployment_queue_full",
            )
        self.in_flight += 1
        try:
            async for event in self._forward(request):
                yield event
        except RateLimited as exc:  # Serve's bounded queue (backpressure, status 429)
            raise self._busy(
                f"Deployment {self.name!r} is at its queue's limit; retry after the "
                "Retry-After delay.",
                "deployment_queue_full",
            ) from exc
        finally:
            self.in_flight -= 1

    async def _forward(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Send ``request`` through the proxy; while the application has no route yet
        (just applied, Serve still deploying it), wait for it, up to ``start_timeout_s``."""
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            started = False
            try:
                events = self._upstream.generate(request)
                try:
                    async for event in events:
                        started = True
                        yield event
                finally:
                    await events.aclose()  # type: ignore[attr-defined]
                return
            except InvalidArgument as exc:
                starting = exc.code == "upstream_rejected" and "not found" in exc.message.lower()
                if started or not starting:
                    raise
                if time.monotonic() > deadline:
                    raise self._busy(
                        f"Deployment {self.name!r} is still starting; retry shortly.",
                        "deployment_starting",
                    ) from exc
                reason = self._blocked()
                if reason is not None:
                    raise self._busy(reason, "deployment_unavailable") from exc
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        await self._upstream.close()


class RayServeDriver:
    """Runs deployments as Ray Serve applications (see the module's docstring)."""

    kind = KIND

    def __init__(
        self,
        dashboard: RayDashboard,
        serve_url: str,
        options: RayServeOptions,
        *,
        max_in_flight: int = 256,
        request_timeout_s: float = 300.0,
        reapply_s: float = 60.0,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dashboard = dashboard
        self._clock = clock or SystemClock()
        self.options = options
        self._serve_url = serve_url.rstrip("/")
        self._max_in_flight = max_in_flight
        self._request_timeout_s = request_timeout_s
        self._reapply_s = reapply_s
        self._monotonic = monotonic
        self._targets: dict[str, DeploymentTarget] = {}
        self._failures: dict[str, str] = {}
        self._applied: dict[str, Any] | None = None
        self._applied_at = 0.0
        self._seen_starting: set[str] = set()
        self._ready_since: dict[str, datetime] = {}
        self._engines: dict[str, DeploymentEngine] = {}
        self._lock = asyncio.Lock()

    # -- DeploymentDriver ------------------------------------------------------------------

    async def apply(self, targets: Sequence[DeploymentTarget]) -> None:
        async with self._lock:
            failures: dict[str, str] = {}
            runnable = list(targets)
            if targets:
                total, largest = capacity_by_type(await self.dashboard.nodes())
                runnable = []
                for target in targets:
                    reason = capacity_failure(target, self.options, total, largest)
                    if reason is None or target.fixed_replicas == 0:
                        runnable.append(target)
                    else:
                        failures[target.name] = reason
            config = serve_config(runnable, self.options)
            stale = self._monotonic() - self._applied_at >= self._reapply_s
            if config != self._applied or stale:
                await self.dashboard.put_serve_config(config)
                self._applied, self._applied_at = config, self._monotonic()
            self._targets = {target.name: target for target in targets}
            self._failures = failures
            for name in [n for n, e in self._engines.items() if n not in self._targets]:
                if self._engines[name].in_flight == 0:  # deleted: drop its connections
                    await self._engines.pop(name).close()

    async def observe(self) -> Mapping[str, DeploymentObservation]:
        details = await self.dashboard.serve_details()
        now = self._clock.now()
        found: dict[str, DeploymentObservation] = {}
        live: set[str] = set()
        for app in (details.get("applications") or {}).values():
            observation = self._observe_app(app, now, live)
            if observation is not None:
                found[observation.name] = observation
        for gone in set(self._ready_since) - live:
            del self._ready_since[gone]
        self._seen_starting &= live
        for name, reason in self._failures.items():
            found[name] = DeploymentObservation(name, failure=reason, observed_at=now)
        for name in self._targets.keys() - found.keys():
            found[name] = DeploymentObservation(
                name, ongoing_requests=self._ongoing(name), observed_at=now
            )
        return found

    def engine(self, name: str) -> TextEngine:
        engine = self._engines.get(name)
        if engine is None:
            target = self._targets.get(name)
            model = target.base_model.name if target is not None else name
            upstream = UpstreamEngine(
                [f"{self._serve_url}{route_prefix(name)}/v1"],
                model,
                timeout_s=self._request_timeout_s,
                connect_timeout_s=10.0,
            )
            engine = DeploymentEngine(
                name,
                upstream,
                max_in_flight=self._max_in_flight,
                retry_after_s=self.options.retry_after_s,
                blocked=lambda: self._blocked(name),
                start_timeout_s=self._request_timeout_s,
            )
            self._engines[name] = engine
        return engine

    async def capacity(self) -> Mapping[str, int]:
        total, _ = capacity_by_type(await self.dashboard.nodes())
        by_name: dict[str, int] = {}
        for fireworks, ray in self.options.accelerators.items():
            if ray in total:
                by_name[fireworks] = total[ray]
        named = set(self.options.accelerators.values())
        by_name.update({kind: gpus for kind, gpus in total.items() if kind not in named})
        return by_name

    async def close(self) -> None:
        """Close the gateway's connections; the replicas keep running (the next apply owns them)."""
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.close()
        await self.dashboard.close()

    async def shutdown_serve(self) -> None:
        """Stop every application and Serve itself (operators, tests); not part of ``close``."""
        await self.dashboard.delete_serve()
        self._applied = None

    # -- internals -------------------------------------------------------------------------

    def _blocked(self, name: str) -> str | None:
        if name in self._failures:
            raise FailedPrecondition(
                f"Deployment {name!r} cannot run: {self._failures[name]}",
                code="deployment_failed",
            )
        target = self._targets.get(name)
        if target is None:
            return f"Deployment {name!r} is not running yet; retry shortly."
        if target.fixed_replicas == 0:
            return (
                f"Deployment {name!r} is scaled to zero (replicaCount 0, or its account is "
                "suspended); scale it up to send it requests."
            )
        return None

    def _ongoing(self, name: str) -> float:
        engine = self._engines.get(name)
        return float(engine.in_flight) if engine is not None else 0.0

    def _observe_app(
        self, app: Mapping[str, Any], now: datetime, live: set[str]
    ) -> DeploymentObservation | None:
        args = (app.get("deployed_app_config") or {}).get("args") or {}
        name = args.get("deployment")
        if not isinstance(name, str):
            return None  # not an application of Firebox's
        deployment = (app.get("deployments") or {}).get(SERVE_DEPLOYMENT) or {}
        replicas = []
        for replica in deployment.get("replicas") or ():
            observed = self._replica(replica, now)
            live.add(observed.replica_id)
            replicas.append(observed)
        failure = None
        app_status = str(app.get("status") or "")
        if app_status == "DEPLOY_FAILED" or deployment.get("status") == "DEPLOY_FAILED":
            failure = str(deployment.get("message") or app.get("message") or app_status)
        extra = {"serve_status": app_status}
        if deployment.get("target_num_replicas") is not None:
            extra["desired_replicas"] = str(deployment["target_num_replicas"])
        message = str(deployment.get("message") or "")
        if _SCHEDULING_HINT in message:  # replicas wait for free accelerators
            starting = sum(1 for r in replicas if r.state is ReplicaState.STARTING)
            extra["pending_replicas"] = str(starting)
            extra["pending"] = message
        return DeploymentObservation(
            name,
            replicas=tuple(replicas),
            failure=failure,
            ongoing_requests=self._ongoing(name),
            observed_at=now,
            extra=extra,
        )

    def _replica(self, replica: Mapping[str, Any], now: datetime) -> ReplicaObservation:
        replica_id = str(replica.get("actor_name") or replica.get("replica_id"))
        state = str(replica.get("state") or "")
        ready_since = self._ready_since.get(replica_id)
        if state in ("RUNNING", "UPDATING") and ready_since is None:
            if replica_id in self._seen_starting:
                ready_since = now
            else:  # already running when this driver started: Serve's own start time
                ready_since = _utc(float(replica.get("start_time_s") or now.timestamp()))
            self._ready_since[replica_id] = ready_since
        if state in _SERVE_STARTING or (state == "UPDATING" and ready_since is None):
            self._seen_starting.add(replica_id)
            return ReplicaObservation(replica_id, ReplicaState.STARTING, None)
        if state == "STOPPING":
            return ReplicaObservation(replica_id, ReplicaState.STOPPING, ready_since)
        return ReplicaObservation(replica_id, ReplicaState.READY, ready_since)
