"""The deployments runtime of one gateway process: driver, controller, meter, hooks.

Built by ``services.py`` (``build_runtime``), started and stopped by the
app's lifespan (``start``/``stop``). It connects the slice to the rest:

- the inference gateway routes deployment names through ``routing`` and
  runs requests on ``driver.engine(name)``;
- the limits slice's suspension hook lands in ``suspension_hook``: the
  account's deployments run at zero, their desired count remembered, and
  come back when the last reason is lifted;
- the meter writes GPU time to the usage sink (the ledger's ingest), and
  the spend watch raises the serverless suspension reason ahead of the cap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from firebox.catalog.index import ResolvedModel
from firebox.clock import Clock
from firebox.deployments.control import DeploymentControl
from firebox.deployments.controller import DeploymentController
from firebox.deployments.drivers.base import DeploymentDriver
from firebox.deployments.drivers.local import LocalDriver
from firebox.deployments.metering import GpuMeter, Money, SpendWatch
from firebox.deployments.placement import PlacementStore
from firebox.deployments.replica_engines import local_capabilities, local_engine_maker
from firebox.deployments.routing import DeploymentRouting
from firebox.inference.engine import TextEngine
from firebox.inference.metering import UsageSink
from firebox.money_state import SpendState
from firebox.settings import Settings
from firebox.store.database import Database

log = logging.getLogger("firebox.deployments")

Cap = Callable[[SpendState, str], tuple[int | None, str]]
RaiseReason = Callable[[str, str, str], object]  # (account, reason, detail)


def parse_capacity(text: str) -> dict[str, int]:
    """``"NVIDIA_A100_80GB=8,NVIDIA_H100_80GB=8"`` -> ``{type: count}``."""
    capacity: dict[str, int] = {}
    for item in text.split(","):
        name, _, count = item.strip().partition("=")
        if name.strip():
            capacity[name.strip()] = int(count or 0)
    return capacity


@dataclass
class DeploymentRuntime:
    """Everything that runs deployments in this process."""

    controller: DeploymentController
    routing: DeploymentRouting
    clock: Clock

    @property
    def driver(self) -> DeploymentDriver:
        return self.controller.driver

    def engine(self, name: str) -> TextEngine:
        """The engine of deployment ``name`` (``EngineRouter.deployments``)."""
        return self.controller.driver.engine(name)

    def suspension_hook(self, account_id: str, suspended: bool, reasons: tuple[str, ...]) -> None:
        """``SuspensionHooks`` callback: scale the account's deployments to zero, or back."""
        control = self.controller.control
        if suspended:
            changed = control.suspend_account(account_id)  # pokes the controller itself
        else:
            changed = control.restore_account(account_id)
        if changed:
            log.info(
                "account %s %s: %d deployments %s",
                account_id,
                "suspended" if suspended else "active",
                changed,
                "scaled to zero" if suspended else "restored",
            )

    def on_change(self) -> None:
        """Called by the deployments service after each committed write."""
        self.controller.poke()

    async def start(self) -> None:
        await self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()


def build_runtime(
    settings: Settings,
    db: Database,
    clock: Clock,
    control: DeploymentControl,
    resolve: Callable[[str, str], ResolvedModel],
    usage: UsageSink,
    money: Money | None = None,
    cap: Cap | None = None,
    raise_reason: RaiseReason | None = None,
    driver: DeploymentDriver | None = None,
) -> DeploymentRuntime:
    """The runtime for ``settings``; ``driver`` replaces the configured one (tests)."""
    if driver is None and settings.deployment_driver == "ray_serve":
        from firebox.deployments.drivers.ray_wiring import ray_serve_driver

        driver = ray_serve_driver(settings, clock)
    if driver is None:
        driver = LocalDriver(
            local_engine_maker(
                settings.models_dir,
                kv_cache_tokens=settings.deployment_kv_cache_tokens,
                num_threads=settings.deployment_replica_threads,
            ),
            clock,
            capacity=parse_capacity(settings.deployment_capacity),
            tick_s=settings.deployment_tick_s,
            queue_limit=settings.deployment_queue_limit,
            wake_timeout_s=settings.deployment_wake_timeout_s,
            default_capabilities=local_capabilities(),
        )
    meter = GpuMeter(usage, settings.deployment_meter_interval_s)
    watch = None
    if money is not None and cap is not None and raise_reason is not None:
        suspend = raise_reason

        def raise_it(account_id: str, reason: str, detail: str, _period: str) -> None:
            suspend(account_id, reason, detail)

        watch = SpendWatch(meter, money, cap, raise_it)
    controller = DeploymentController(
        control,
        PlacementStore(db),
        driver,
        resolve,
        clock,
        meter,
        watch,
        interval_s=settings.deployment_reconcile_interval_s,
        spend_check_s=min(
            10.0,
            settings.deployment_meter_interval_s / 2,
            settings.deployment_reconcile_interval_s * 5,
        ),
        models_dir=settings.models_dir,
    )
    return DeploymentRuntime(controller, DeploymentRouting(lambda: controller.routes), clock)
