"""Builds the deployments slice for ``services.py``: the API service, shapes, runtime access."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from firebox.clock import Clock
from firebox.deployments.base_models import BaseModels
from firebox.deployments.control import DeploymentControl
from firebox.deployments.quota import QuotaClaims
from firebox.deployments.service import DeploymentService, DeploymentSettings
from firebox.deployments.shapes import ShapeService
from firebox.deployments.spec import SpecBounds
from firebox.settings import Settings
from firebox.store.database import Database


@dataclass
class DeploymentSlice:
    """The deployments slice of one process."""

    service: DeploymentService
    shapes: ShapeService
    control: DeploymentControl

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every committed change of what should run."""
        self.service.on_change = callback
        self.control.on_change = callback


def build_deployments(
    settings: Settings, db: Database, clock: Clock, quotas: QuotaClaims | None
) -> DeploymentSlice:
    models = BaseModels()
    shapes = ShapeService(db, clock, models)
    options = DeploymentSettings(
        bounds=SpecBounds(min_scale_to_zero_s=settings.deployment_min_scale_to_zero_s),
        retention_s=settings.deployment_retention_s,
    )
    service = DeploymentService(db, clock, models, shapes, options, quotas)
    return DeploymentSlice(service=service, shapes=shapes, control=DeploymentControl(db, clock))
