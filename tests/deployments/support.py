"""Builders shared by the deployment tests: targets for the bundled tiny model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from firebox.catalog.binding import LocalEngine
from firebox.catalog.index import LoraAdapter, ResolvedModel
from firebox.catalog.kinds import ModelKind
from firebox.deployments.drivers.base import AutoscalingTarget, DeploymentTarget
from firebox.deployments.models import DeploymentRow
from firebox.store.database import Database

T = TypeVar("T")

TINY = "accounts/firebox/models/firebox-tiny"
TINY_LORA = "accounts/firebox/models/firebox-tiny-lora"


def tiny_model() -> ResolvedModel:
    return ResolvedModel(
        name=TINY,
        account_id="firebox",
        model_id="firebox-tiny",
        kind=ModelKind.TEXT_BASE,
        public=True,
        base_model=None,
        adapter=None,
        context_length=2048,
        supports_image_input=False,
        price_class=None,
        price_micro_usd=None,
        engine=LocalEngine("firebox-tiny"),
    )


def tiny_lora() -> ResolvedModel:
    return replace(
        tiny_model(),
        name=TINY_LORA,
        model_id="firebox-tiny-lora",
        kind=ModelKind.LORA_ADDON,
        base_model=TINY,
        adapter=LoraAdapter(TINY_LORA, 8, ("q_proj",), None, "firebox-tiny-lora"),
    )


def autoscaling(**kw: float) -> AutoscalingTarget:
    fields: dict[str, float] = {
        "min_replicas": 0,
        "max_replicas": 2,
        "scale_up_window_s": 0.0,
        "scale_down_window_s": 0.5,
        "scale_to_zero_window_s": 1.0,
        "target_ongoing_requests": 1.0,
    }
    fields.update(kw)
    return AutoscalingTarget(
        min_replicas=int(fields["min_replicas"]),
        max_replicas=int(fields["max_replicas"]),
        scale_up_window_s=fields["scale_up_window_s"],
        scale_down_window_s=fields["scale_down_window_s"],
        scale_to_zero_window_s=fields["scale_to_zero_window_s"],
        target_ongoing_requests=fields["target_ongoing_requests"],
    )


def target(
    deployment_id: str = "d1",
    account_id: str = "acme",
    *,
    accelerator_type: str = "NVIDIA_A100_80GB",
    accelerator_count: int = 1,
    fixed_replicas: int | None = None,
    addons: tuple[ResolvedModel, ...] = (),
    revision: int = 1,
    **scaling: float,
) -> DeploymentTarget:
    return DeploymentTarget(
        name=f"accounts/{account_id}/deployments/{deployment_id}",
        account_id=account_id,
        deployment_id=deployment_id,
        base_model=tiny_model(),
        addons=addons,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        autoscaling=autoscaling(**scaling),
        fixed_replicas=fixed_replicas,
        max_context_length=None,
        revision=revision,
    )


def insert_deployment(
    db: Database,
    account_id: str,
    deployment_id: str,
    now: datetime,
    **fields: object,
) -> int:
    """A deployment row as the deployments service writes it (its pk)."""
    values: dict[str, object] = {
        "base_model": TINY,
        "accelerator_type": "NVIDIA_A100_80GB",
        "accelerator_count": 1,
        "min_replica_count": 0,
        "max_replica_count": 1,
        "scale_up_window_s": 0.0,
        "scale_down_window_s": 1.0,
        "scale_to_zero_window_s": 600.0,
        "load_targets": {},
        "enable_addons": True,
    }
    values.update(fields)
    with db.transaction() as session:
        row = DeploymentRow(
            account_id=account_id,
            deployment_id=deployment_id,
            create_time=now,
            update_time=now,
            **values,
        )
        session.add(row)
        session.flush()
        return int(row.pk)


def read_deployment(db: Database, pk: int) -> DeploymentRow:
    with db.transaction() as session:
        row = session.get(DeploymentRow, pk)
        assert row is not None
        session.expunge_all()
    return row


def until(check: Callable[[], T | None], what: str, timeout_s: float = 180.0) -> T:
    """Poll ``check`` until it returns something truthy (a generous deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
