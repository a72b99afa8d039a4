"""Builders shared by the deployment tests: targets for the bundled tiny model."""

from __future__ import annotations

from dataclasses import replace

from firebox.catalog.binding import LocalEngine
from firebox.catalog.index import LoraAdapter, ResolvedModel
from firebox.catalog.kinds import ModelKind
from firebox.deployments.drivers.base import AutoscalingTarget, DeploymentTarget

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
