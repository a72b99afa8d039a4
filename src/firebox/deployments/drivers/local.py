"""The ``local`` driver: deployment replicas as in-process engines, on one node.

Each replica is its own engine instance (for the bundled local engine: its
own weights and scheduler thread), made in a worker thread; it is READY, and
billed, from the moment the engine is loaded until it is stopped. Replicas
ask for *virtual accelerators* of the deployment's type: the driver holds a
fixed number per type (``capacity``), refuses to place a replica beyond it
(the deployment stays pending, said in its observation) and reports a
deployment that can never fit as failed. They are quota-checked and billed
exactly like real ones; on a machine with a GPU the engine uses it.

The driver scales each deployment itself, on every ``tick_s``, with the
policy of ``deployments/autoscaling.py`` (the same function Ray Serve's
config mirrors), over the load it sees: requests in flight on its replicas
plus requests waiting for one. A request to a deployment at zero wakes it
at once and waits for the first replica, in a bounded queue: past
``queue_limit`` waiting requests, or after ``wake_timeout_s``, the answer is
a 503 with ``Retry-After``, never a hang.

Single node: replicas live and die with the gateway process. After a
restart the controller applies the database's set again and the replicas
start anew (no orphans are possible: there is no process outside ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence

from anyio import to_thread

from firebox.clock import Clock
from firebox.deployments.autoscaling import decide
from firebox.deployments.drivers.base import (
    DeploymentObservation,
    DeploymentTarget,
    ReplicaObservation,
    ReplicaState,
)
from firebox.deployments.drivers.local_state import (
    DEFAULT_CAPABILITIES,
    DeploymentEngine,
    LocalDeployment,
    LocalReplica,
)
from firebox.errors import NotFound, ServiceUnavailable
from firebox.inference.engine import (
    EngineCapabilities,
    TextEngine,
)

log = logging.getLogger("firebox.deployments")

__all__ = ["DEFAULT_CAPABILITIES", "EngineMaker", "LocalDriver"]

EngineMaker = Callable[[DeploymentTarget], TextEngine]
"""Builds one replica's engine for a deployment (blocking: runs in a worker thread)."""


class LocalDriver:
    """Runs every deployment's replicas in this process (see the module docstring)."""

    kind = "local"

    def __init__(
        self,
        make_engine: EngineMaker,
        clock: Clock,
        *,
        capacity: Mapping[str, int],
        tick_s: float = 0.5,
        queue_limit: int = 64,
        wake_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
        retry_after_s: int = 5,
        monotonic: Callable[[], float] = time.monotonic,
        default_capabilities: EngineCapabilities = DEFAULT_CAPABILITIES,
    ) -> None:
        self._make_engine = make_engine
        self._clock = clock
        self._capacity = dict(capacity)
        self._tick_s = tick_s
        self._queue_limit = queue_limit
        self._wake_timeout_s = wake_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._retry_after_s = retry_after_s
        self._monotonic = monotonic
        self._default_capabilities = default_capabilities
        self._deployments: dict[str, LocalDeployment] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- the driver interface --------------------------------------------------

    async def apply(self, targets: Sequence[DeploymentTarget]) -> None:
        self._ensure_loop()
        wanted = {t.name: t for t in targets}
        for name, target in wanted.items():
            dep = self._deployments.get(name)
            if dep is None:
                dep = self._deployments[name] = LocalDeployment(target)
            else:
                dep.target = target
                dep.removed = False
                if dep.failed_spec is not None and dep.failed_spec != dep.spec:
                    dep.failure = dep.failed_spec = None  # a new spec gets a new try
            self._register_addons(dep)
            self._scale(dep)
        for name, dep in self._deployments.items():
            if name not in wanted and not dep.removed:
                dep.removed = True
                self._scale(dep)
        self._forget_drained()

    async def observe(self) -> Mapping[str, DeploymentObservation]:
        now = self._clock.now()
        seen: dict[str, DeploymentObservation] = {}
        for name, dep in self._deployments.items():
            replicas = tuple(
                ReplicaObservation(r.replica_id, r.state, r.ready_since)
                for r in dep.replicas.values()
            )
            live = len(dep.live())
            seen[name] = DeploymentObservation(
                name=name,
                replicas=replicas,
                failure=dep.failure,
                ongoing_requests=dep.load(),
                observed_at=now,
                extra={
                    "desired_replicas": str(0 if dep.removed else dep.desired),
                    "pending_replicas": str(max(dep.desired - live, 0) if not dep.removed else 0),
                },
            )
        return seen

    def engine(self, name: str) -> TextEngine:
        return DeploymentEngine(self, name)

    async def capacity(self) -> Mapping[str, int]:
        return dict(self._capacity)

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
            self._loop_task = None
        replicas = [r for d in self._deployments.values() for r in d.replicas.values()]
        self._deployments.clear()
        for replica in replicas:
            if replica.task is not None and not replica.task.done():
                replica.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await replica.task
            if replica.engine is not None:
                with contextlib.suppress(Exception):
                    await replica.engine.close()

    # -- scaling ---------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None and not self._closed:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            for dep in list(self._deployments.values()):
                try:
                    self._scale(dep)
                except Exception:  # one deployment's trouble never stops the others
                    log.exception("scaling %s failed", dep.target.name)
            self._forget_drained()

    def _scale(self, dep: LocalDeployment) -> None:
        """Decide the count, then start or stop replicas to reach it."""
        target = dep.target
        live = dep.live()
        if dep.removed:
            dep.desired = 0
        else:
            decision = decide(
                target.autoscaling,
                dep.desired,
                dep.load(),
                self._monotonic(),
                dep.scaler,
                target.fixed_replicas,
            )
            dep.scaler = decision.state
            if decision.replicas != dep.desired:
                log.info(
                    "deployment %s: %d -> %d replicas (%s)",
                    target.name,
                    dep.desired,
                    decision.replicas,
                    decision.reason,
                )
            dep.desired = decision.replicas
        for replica in dep.replicas.values():  # an old spec's replicas go
            if replica.spec != dep.spec and replica.state is not ReplicaState.STOPPING:
                self._stop(dep, replica)
        extra = len(live) - dep.desired
        if extra > 0:
            # Starting ones first (never billed), then the least busy.
            order = sorted(live, key=lambda r: (r.state is ReplicaState.READY, r.ongoing))
            for replica in order[:extra]:
                self._stop(dep, replica)
        elif extra < 0 and dep.failure is None:
            per = target.accelerator_count
            total = self._capacity.get(target.accelerator_type, 0)
            if per > total:
                dep.failure = (
                    f"Each replica needs {per} x {target.accelerator_type} and this node has "
                    f"{total}; lower acceleratorCount or use another acceleratorType."
                )
                dep.failed_spec = dep.spec
                dep.notify()
                return
            for _ in range(-extra):
                if self._free(target.accelerator_type) < per:
                    break  # pending until capacity frees up (observed as pending_replicas)
                self._start(dep)

    def _free(self, accelerator_type: str) -> int:
        used = sum(
            d.target.accelerator_count
            for d in self._deployments.values()
            if d.target.accelerator_type == accelerator_type
            for _ in d.replicas.values()
        )
        return self._capacity.get(accelerator_type, 0) - used

    def _start(self, dep: LocalDeployment) -> None:
        replica_id = f"{dep.target.deployment_id}-{secrets.token_hex(6)}"
        replica = LocalReplica(replica_id, dep.spec)
        dep.replicas[replica_id] = replica
        replica.task = asyncio.get_running_loop().create_task(self._boot(dep, replica))

    async def _boot(self, dep: LocalDeployment, replica: LocalReplica) -> None:
        target = dep.target
        try:
            engine = await to_thread.run_sync(self._make_engine, target, abandon_on_cancel=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("replica %s of %s failed to start", replica.replica_id, target.name)
            dep.replicas.pop(replica.replica_id, None)
            dep.failure = f"A replica failed to start: {exc}"
            dep.failed_spec = replica.spec
            dep.notify()
            return
        if replica.state is ReplicaState.STOPPING or self._closed:
            await engine.close()
            dep.replicas.pop(replica.replica_id, None)
            dep.notify()
            return
        replica.engine = engine
        dep.capabilities = engine.capabilities
        self._register_addons(dep, only=replica)
        replica.ready_since = self._clock.now()
        replica.state = ReplicaState.READY
        replica.task = None
        dep.notify()

    def _stop(self, dep: LocalDeployment, replica: LocalReplica) -> None:
        if replica.state is ReplicaState.STOPPING:
            return
        booting = replica.state is ReplicaState.STARTING
        replica.state = ReplicaState.STOPPING
        if booting:
            # Its boot task sees STOPPING when the engine is loaded and closes it; it was
            # never READY, so it has nothing to bill.
            return
        asyncio.get_running_loop().create_task(self._drain(dep, replica))

    async def _drain(self, dep: LocalDeployment, replica: LocalReplica) -> None:
        deadline = self._monotonic() + self._drain_timeout_s
        while replica.ongoing > 0 and self._monotonic() < deadline:
            waiter = dep.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout=0.5)
        dep.replicas.pop(replica.replica_id, None)
        if replica.engine is not None:
            try:
                await replica.engine.close()
            except Exception:
                log.exception("closing replica %s failed", replica.replica_id)
        dep.notify()

    def _forget_drained(self) -> None:
        for name in [n for n, d in self._deployments.items() if d.removed and not d.replicas]:
            dep = self._deployments.pop(name)
            dep.notify()  # waiters see it gone

    def _register_addons(self, dep: LocalDeployment, only: LocalReplica | None = None) -> None:
        """Tell the replicas' engines where the deployment's add-ons are."""
        replicas = [only] if only is not None else list(dep.replicas.values())
        for replica in replicas:
            register = getattr(replica.engine, "register_adapter", None)
            if register is None:
                continue
            for addon in dep.target.addons:
                if addon.adapter is None or addon.adapter.path is None:
                    continue
                try:
                    register(
                        addon.adapter.upstream_adapter or addon.adapter.name, addon.adapter.path
                    )
                except (OSError, ValueError):
                    log.exception("replica %s cannot load %s", replica.replica_id, addon.name)

    # -- requests --------------------------------------------------------------

    async def acquire(self, name: str) -> tuple[LocalDeployment, LocalReplica]:
        """A ready replica of ``name`` for one request, waking the deployment if at zero."""
        dep = self._deployments.get(name)
        if dep is None or dep.removed:
            raise NotFound(f"Deployment {name!r} is not running.", code="deployment_not_found")
        replica = dep.pick()
        if replica is not None:
            replica.ongoing += 1
            return dep, replica
        self._check_servable(dep)
        if dep.waiting >= self._queue_limit:
            raise self._busy(
                name,
                f"{dep.waiting} requests already wait for a replica of {name}",
                "deployment_queue_full",
            )
        dep.waiting += 1
        deadline = self._monotonic() + self._wake_timeout_s
        try:
            self._scale(dep)  # wake now, not at the next tick
            while True:
                replica = dep.pick()
                if replica is not None:
                    replica.ongoing += 1
                    return dep, replica
                if self._deployments.get(name) is not dep or dep.removed:
                    raise NotFound(f"Deployment {name!r} was deleted.", code="deployment_not_found")
                self._check_servable(dep)
                left = deadline - self._monotonic()
                if left <= 0:
                    raise self._busy(
                        name, f"no replica of {name} became ready in time", "deployment_starting"
                    )
                waiter = dep.changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=min(left, 1.0))
        finally:
            dep.waiting -= 1

    def release(self, dep: LocalDeployment, replica: LocalReplica) -> None:
        replica.ongoing -= 1
        if replica.ongoing == 0:
            dep.notify()

    def capabilities_of(self, name: str) -> EngineCapabilities:
        dep = self._deployments.get(name)
        if dep is not None and dep.capabilities is not None:
            return dep.capabilities
        return self._default_capabilities

    def _check_servable(self, dep: LocalDeployment) -> None:
        if dep.failure is not None:
            raise ServiceUnavailable(
                f"Deployment {dep.target.name} cannot run: {dep.failure}",
                code="deployment_failed",
            )
        if dep.target.fixed_replicas == 0:
            raise ServiceUnavailable(
                f"Deployment {dep.target.name} is scaled to zero (by :scale or while its "
                "account is suspended); scale it up to serve requests.",
                code="deployment_scaled_to_zero",
            )

    def _busy(self, name: str, why: str, code: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"Deployment {name} is starting: {why}. Retry after {self._retry_after_s} s.",
            code=code,
            headers={"Retry-After": str(self._retry_after_s)},
        )
