"""The reconcile loop: the database's deployments onto the driver, and what runs back.

Each pass (every ``interval_s``, and at once after a write, ``poke``):

1. reads the live deployments and the add-ons placed on them, and builds
   the ``DeploymentTarget`` set (a suspended account's run at a fixed 0);
2. ``driver.apply(set)``: the driver makes what runs match, stopping
   anything not named, so after a gateway restart the first pass leaves no
   orphan;
3. ``driver.observe()``: replica counts and state are written back to the
   rows (``state`` CREATING/UPDATING -> READY, FAILED with the driver's
   reason; DELETING -> DELETED once drained), each change recorded as an
   event;
4. the GPU meter charges the replica time observed (idempotent per
   replica and interval, so a restart never bills twice), and the spend
   watch suspends an account whose next interval would pass its cap.

The last built set is also the in-memory index the inference gateway
routes deployment names with (``routes``), so a request never queries the
database to find its deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from anyio import to_thread

from firebox.catalog.index import LoraAdapter, ResolvedModel
from firebox.clock import Clock
from firebox.deployments.drivers.base import (
    AutoscalingTarget,
    DeploymentDriver,
    DeploymentObservation,
    DeploymentTarget,
    ReplicaState,
)
from firebox.deployments.metering import GpuMeter, SpendWatch
from firebox.deployments.models import DeploymentRow, DeploymentState, deployment_name
from firebox.deployments.runtime_store import Observed, Placed, RuntimeStore

log = logging.getLogger("firebox.deployments")

# ``loadTargets.default`` is a 0-1 utilisation; a replica counts as fully used at this
# many requests in flight. ``loadTargets.concurrent_requests`` names the count directly.
FULL_REPLICA_REQUESTS = 8


def target_ongoing_requests(load_targets: Mapping[str, float] | None) -> float:
    """Requests in flight per replica that the autoscaler aims at."""
    targets = dict(load_targets or {})
    concurrent = targets.get("concurrent_requests")
    if concurrent is not None and concurrent > 0:
        return float(concurrent)
    fraction = targets.get("default", 0.8)
    return max(float(fraction) * FULL_REPLICA_REQUESTS, 0.1)


Resolve = Callable[[str, str], ResolvedModel]
"""``resolve(account_id, model_name)``: the catalog's in-memory lookup (raises if unknown)."""


@dataclass(frozen=True, slots=True)
class Routes:
    """What the inference gateway needs to route deployment names (a snapshot)."""

    targets: Mapping[str, DeploymentTarget]
    deployed: Mapping[str, tuple[str, ResolvedModel]]  # deployedModels name -> (deployment, addon)


class DeploymentController:
    """Reconciles the database with a ``DeploymentDriver`` (see the module docstring)."""

    def __init__(
        self,
        store: RuntimeStore,
        driver: DeploymentDriver,
        resolve: Resolve,
        clock: Clock,
        meter: GpuMeter,
        watch: SpendWatch | None = None,
        *,
        interval_s: float = 2.0,
        spend_check_s: float = 10.0,
        models_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self._resolve = resolve
        self._clock = clock
        self.meter = meter
        self._watch = watch
        self._interval_s = interval_s
        self._spend_check_s = spend_check_s
        self._models_dir = models_dir
        self.routes = Routes({}, {})
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_spend_check = 0.0
        self._lock = asyncio.Lock()
        self.passes = 0  # completed reconcile passes (tests wait on it)
        self._passed: asyncio.Event | None = None

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile once (restart reconciliation), then keep reconciling in the background."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._passed = asyncio.Event()
        await self.reconcile()
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        """Stop reconciling and the driver; replicas that die with us are charged up to now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.driver.close()
        if self.driver.kind == "local":  # its replicas stopped with it
            self.meter.close_all(self._clock.now())

    def poke(self) -> None:
        """Reconcile now (thread-safe; the service calls it after each committed write)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(wake.set)

    async def wait_pass(self, timeout_s: float = 60.0) -> None:
        """Wait for the end of the next full pass (tests and the CLI's --wait use it)."""
        self.poke()
        target = self.passes + 2  # one may be half done already
        deadline = time.monotonic() + timeout_s
        while self.passes < target:
            assert self._passed is not None
            waiter = self._passed
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reconcile pass finished in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout=left)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling deployments failed; retrying")

    # -- one pass ----------------------------------------------------------------

    async def reconcile(self) -> None:
        async with self._lock:
            rows, placed = await to_thread.run_sync(self.store.live)
            targets, failures = self._targets(rows, placed)
            self.routes = Routes(targets, self._deployed(targets, placed))
            await self.driver.apply(list(targets.values()))
            seen = await self.driver.observe()
            now = self._clock.now()
            await to_thread.run_sync(self._write_back, rows, placed, failures, seen, now)
            self.meter.observe(targets, seen, now)
            if self._watch is not None and time.monotonic() - self._last_spend_check >= (
                self._spend_check_s
            ):
                self._last_spend_check = time.monotonic()
                await to_thread.run_sync(self._watch.check, now)
            self.passes += 1
            if self._passed is not None:
                self._passed.set()
                self._passed = asyncio.Event()

    def _targets(
        self, rows: list[DeploymentRow], placed: Mapping[str, list[Placed]]
    ) -> tuple[dict[str, DeploymentTarget], dict[int, str]]:
        targets: dict[str, DeploymentTarget] = {}
        failures: dict[int, str] = {}
        for row in rows:
            name = deployment_name(row.account_id, row.deployment_id)
            try:
                base = self._resolve(row.account_id, row.base_model)
            except Exception as exc:
                failures[row.pk] = f"Base model {row.base_model} cannot be served: {exc}"
                continue
            if base.engine is None:
                failures[row.pk] = f"Base model {row.base_model} has no engine bound."
                continue
            addons = []
            for item in placed.get(name, []) if row.enable_addons else []:
                try:
                    addon = self._resolve(item.account_id, item.addon)
                except Exception:
                    log.warning("add-on %s on %s is no longer in the catalog", item.addon, name)
                    continue
                addons.append(self._absolute(addon))
            fixed = 0 if row.suspended else row.fixed_replicas
            targets[name] = DeploymentTarget(
                name=name,
                account_id=row.account_id,
                deployment_id=row.deployment_id,
                base_model=base,
                addons=tuple(addons),
                accelerator_type=row.accelerator_type,
                accelerator_count=row.accelerator_count,
                autoscaling=AutoscalingTarget(
                    min_replicas=row.min_replica_count,
                    max_replicas=max(row.max_replica_count, row.min_replica_count),
                    scale_up_window_s=row.scale_up_window_s,
                    scale_down_window_s=row.scale_down_window_s,
                    scale_to_zero_window_s=row.scale_to_zero_window_s,
                    target_ongoing_requests=target_ongoing_requests(row.load_targets),
                ),
                fixed_replicas=fixed,
                max_context_length=row.max_context_length,
                revision=row.revision,
            )
        return targets, failures

    def _absolute(self, addon: ResolvedModel) -> ResolvedModel:
        """``addon`` with its adapter folder made absolute (relative ones are under models/)."""
        adapter = addon.adapter
        if adapter is None or adapter.path is None or self._models_dir is None:
            return addon
        path = Path(adapter.path).expanduser()
        if path.is_absolute():
            return addon
        absolute: LoraAdapter = replace(adapter, path=str(self._models_dir / path))
        return replace(addon, adapter=absolute)

    @staticmethod
    def _deployed(
        targets: Mapping[str, DeploymentTarget], placed: Mapping[str, list[Placed]]
    ) -> dict[str, tuple[str, ResolvedModel]]:
        routes: dict[str, tuple[str, ResolvedModel]] = {}
        for name, target in targets.items():
            by_name = {addon.name: addon for addon in target.addons}
            for item in placed.get(name, []):
                addon = by_name.get(item.addon)
                if addon is not None and item.state == "DEPLOYED":
                    deployed = f"accounts/{item.account_id}/deployedModels/{item.deployed_model_id}"
                    routes[deployed] = (name, addon)
        return routes

    def _write_back(
        self,
        rows: list[DeploymentRow],
        placed: Mapping[str, list[Placed]],
        failures: Mapping[int, str],
        seen: Mapping[str, DeploymentObservation],
        now: datetime,
    ) -> None:
        for row in rows:
            name = deployment_name(row.account_id, row.deployment_id)
            observed = _observed(row, seen.get(name), failures.get(row.pk))
            events = _events(row, observed)
            self.store.write(row.pk, observed, now, events)
            if observed.state == DeploymentState.READY.value and row.enable_addons:
                waiting = [p.deployed_model_id for p in placed.get(name, [])]
                if self.store.mark_placed(row.account_id, waiting):
                    self.poke()  # route them on the next pass
        for row in self.store.deleting():
            name = deployment_name(row.account_id, row.deployment_id)
            observation = seen.get(name)
            if observation is not None and observation.replicas:
                state = DeploymentState.DELETING.value
            else:
                state = DeploymentState.DELETED.value
            observed = Observed(state, "OK", "", 0, 0, 0, 0, 0)
            if observation is not None:
                observed = _counts(observed, observation)
            self.store.write(row.pk, observed, now, _events(row, observed))


def _counts(base: Observed, seen: DeploymentObservation) -> Observed:
    ready = sum(1 for r in seen.replicas if r.state is ReplicaState.READY)
    starting = sum(1 for r in seen.replicas if r.state is ReplicaState.STARTING)
    stopping = sum(1 for r in seen.replicas if r.state is ReplicaState.STOPPING)
    desired = int(seen.extra.get("desired_replicas", ready + starting) or 0)
    pending = int(seen.extra.get("pending_replicas", 0) or 0)
    return replace(
        base,
        replica_count=ready + starting + stopping,
        desired_replica_count=desired,
        pending_replicas=pending,
        initializing_replicas=starting,
        ready_replicas=ready,
    )


def _observed(
    row: DeploymentRow, seen: DeploymentObservation | None, failure: str | None
) -> Observed:
    base = Observed(row.state, "OK", "", 0, row.desired_replica_count, 0, 0, 0)
    if failure is not None:
        return replace(base, state=DeploymentState.FAILED.value, status_code="FAILED_PRECONDITION",
                       status_message=failure)  # fmt: skip
    if seen is None:  # not applied yet (a pass is under way)
        return Observed(row.state, row.status_code, row.status_message, row.replica_count,
                        row.desired_replica_count, row.pending_replicas,
                        row.initializing_replicas, row.ready_replicas)  # fmt: skip
    counted = _counts(base, seen)
    if seen.failure is not None:
        return replace(counted, state=DeploymentState.FAILED.value, status_code="UNAVAILABLE",
                       status_message=seen.failure)  # fmt: skip
    fixed = 0 if row.suspended else row.fixed_replicas
    needed = fixed if fixed is not None else row.min_replica_count
    needed = min(needed, counted.desired_replica_count) if fixed is None else needed
    state = row.state
    if counted.ready_replicas >= needed:
        state = DeploymentState.READY.value
    elif state in (DeploymentState.READY.value, DeploymentState.FAILED.value):
        state = DeploymentState.UPDATING.value
    message = ""
    if counted.pending_replicas:
        message = f"{counted.pending_replicas} replicas wait for free {row.accelerator_type}"
    if row.suspended:
        message = "The account is suspended: the deployment runs at zero until it is active."
    return replace(counted, state=state, status_message=message)


def _events(row: DeploymentRow, observed: Observed) -> list[tuple[str, str]]:
    events = []
    if observed.state != row.state:
        detail = f"{row.state} -> {observed.state}"
        if observed.status_message:
            detail += f": {observed.status_message}"
        events.append(("STATE", detail))
    if observed.desired_replica_count != row.desired_replica_count:
        events.append(
            ("SCALE", f"{row.desired_replica_count} -> {observed.desired_replica_count} replicas")
        )
    return events
