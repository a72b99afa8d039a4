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
from firebox.deployments.control import DeploymentControl, Observed
from firebox.deployments.drivers.base import (
    DeploymentDriver,
    DeploymentObservation,
    DeploymentTarget,
    ReplicaState,
)
from firebox.deployments.metering import GpuMeter, SpendWatch
from firebox.deployments.models import DeploymentRow, DeploymentState, deployment_name
from firebox.deployments.placement import Placed, PlacementStore
from firebox.deployments.targets import replicas_override, target_of

log = logging.getLogger("firebox.deployments")

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
        control: DeploymentControl,
        placement: PlacementStore,
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
        self.control = control
        self.placement = placement
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
        self.spend_checks = 0  # completed spend checks
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
            rows, placed = await to_thread.run_sync(self._read)
            targets, failures = self._targets(rows, placed)
            self.routes = Routes(targets, self._deployed(targets, placed))
            await self.driver.apply(list(targets.values()))
            seen = await self.driver.observe()
            now = self._clock.now()
            # Meter before publishing: once a row says a replica is ready, the meter bills
            # it, even if this pass is cancelled in the write-back (a gateway stopping then
            # charges it up to the stop; the other order lost that time).
            self.meter.observe(targets, seen, now)
            await to_thread.run_sync(self._write_back, rows, placed, failures, seen, now)
            if self._watch is not None and time.monotonic() - self._last_spend_check >= (
                self._spend_check_s
            ):
                self._last_spend_check = time.monotonic()
                await to_thread.run_sync(self._watch.check, now)
                self.spend_checks += 1
            self.passes += 1
            if self._passed is not None:
                self._passed.set()
                self._passed = asyncio.Event()

    def _read(self) -> tuple[list[DeploymentRow], dict[str, list[Placed]]]:
        return list(self.control.live()), self.placement.placed()

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
            targets[name] = target_of(row, base, tuple(addons))
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
            if observed is not None and _differs(row, observed):
                self.control.record(row.pk, observed)
            ready = (observed.state if observed else None) or DeploymentState(row.state)
            if ready is DeploymentState.READY and row.enable_addons:
                waiting = [p.deployed_model_id for p in placed.get(name, [])]
                if self.placement.mark_placed(row.account_id, waiting):
                    self.poke()  # route them on the next pass
        for row in self.control.deleting():
            name = deployment_name(row.account_id, row.deployment_id)
            observation = seen.get(name)
            gone = Observed(state=DeploymentState.DELETED)
            self.control.record(row.pk, _counts(gone, observation) if observation else gone)


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
) -> Observed | None:
    """The row's observed columns after this pass; None to leave them (not applied yet)."""
    if failure is not None:
        return Observed(DeploymentState.FAILED, "FAILED_PRECONDITION", failure)
    if seen is None:
        return None
    counted = _counts(Observed(), seen)
    if seen.failure is not None:
        return replace(
            counted, state=DeploymentState.FAILED, status_code="UNAVAILABLE",
            status_message=seen.failure,
        )  # fmt: skip
    fixed = replicas_override(row)
    needed = (
        fixed if fixed is not None else min(row.min_replica_count, counted.desired_replica_count)
    )
    state = DeploymentState(row.state)
    if counted.ready_replicas >= needed:
        state = DeploymentState.READY
    elif state in (DeploymentState.READY, DeploymentState.FAILED):
        state = DeploymentState.UPDATING
    message = ""
    if counted.pending_replicas:
        message = f"{counted.pending_replicas} replicas wait for free {row.accelerator_type}"
    if row.suspended:
        message = "The account is suspended: the deployment runs at zero until it is active."
    return replace(counted, state=state, status_message=message)


def _differs(row: DeploymentRow, observed: Observed) -> bool:
    """Whether writing ``observed`` changes the row (most passes change nothing)."""
    state = observed.state.value if observed.state is not None else row.state
    return (
        state,
        observed.status_code,
        observed.status_message,
        observed.replica_count,
        observed.desired_replica_count,
        observed.pending_replicas,
        observed.initializing_replicas,
        observed.ready_replicas,
    ) != (
        row.state,
        row.status_code,
        row.status_message,
        row.replica_count,
        row.desired_replica_count,
        row.pending_replicas,
        row.initializing_replicas,
        row.ready_replicas,
    )
