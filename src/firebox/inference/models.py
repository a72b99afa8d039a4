"""Model names as the inference routes receive them, resolved for serving.

Accepts a catalog name (``accounts/{a}/models/{m}``, or a bare ``m`` for a
public model of the platform account) and refuses, with a clear error, a
model of the wrong kind for the route. ``ModelRef`` is what serving needs of
a model: the engine binding, the name the engine knows, the add-on to apply,
and the model whose price applies. A LoRA add-on is served only while it is
loaded (``deployedModels``) in the caller's account or in the platform
account; the catalog answers that from memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from firebox.catalog.binding import EngineBinding
from firebox.catalog.index import ResolvedModel
from firebox.catalog.kinds import ModelKind
from firebox.errors import FailedPrecondition, InvalidArgument, NotFound

# How many tokens a choice may generate when the request sets no max_tokens (the
# operator's FIREBOX_DEFAULT_MAX_COMPLETION_TOKENS; never past the context).
DEFAULT_MAX_COMPLETION_TOKENS = 2048


class CatalogLookup(Protocol):
    def resolve(self, account_id: str, name: str) -> ResolvedModel: ...

    def addon_deployed(self, account_id: str, name: str) -> bool: ...


class DeploymentLookup(Protocol):
    """On-demand deployments by the names inference requests use (``deployments.routing``)."""

    def resolve_deployment(
        self, account_id: str, name: str
    ) -> tuple[ResolvedModel, str, int | None]: ...


def _is_deployment_name(name: str) -> bool:
    return "#" in name or "/deployments/" in name or "/deployedModels/" in name


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model ready to be served."""

    name: str  # the catalog name the caller used, normalised
    kind: ModelKind
    binding: EngineBinding
    engine_model: str  # the model's name at its engine
    adapter: str | None  # the LoRA add-on's name at the engine
    billing_model: str  # the model whose price applies (an add-on's base)
    context_length: int
    vision: bool
    deployment: str | None = None
    adapter_path: str | None = None  # the add-on's folder, for engines that load it at run time
    price_class: str | None = None  # SPEC §2 row of the billing model
    explicit_price_micros: int | None = None  # catalog price when it fits no row
    max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS  # per choice, without max_tokens


class ModelResolver:
    """Turns the ``model`` field of a request into a ``ModelRef``."""

    def __init__(
        self, catalog: CatalogLookup, max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS
    ) -> None:
        self._catalog = catalog
        self._max_completion_tokens = max_completion_tokens
        self.deployments: DeploymentLookup | None = None  # set by services.py

    def _resolve_deployment(self, account_id: str, name: str) -> ModelRef:
        assert self.deployments is not None
        model, deployment, context = self.deployments.resolve_deployment(account_id, name)
        ref = replace(
            self.ref(model),
            deployment=deployment,
            max_completion_tokens=self._max_completion_tokens,
        )
        if context:
            ref = replace(ref, context_length=min(context, ref.context_length or context))
        return ref

    def _resolve(self, account_id: str, name: str) -> ResolvedModel:
        if _is_deployment_name(name) and self.deployments is not None:
            raise InvalidArgument(
                f"{name!r} is an on-demand deployment; deployments serve chat and completions.",
                code="wrong_model_kind",
                param="model",
            )
        if _is_deployment_name(name):
            raise NotFound(
                f"Deployment {name!r} was not found. On-demand deployments are not offered "
                "by this server yet; call the model by its catalog name.",
                code="deployment_not_found",
                param="model",
            )
        model = self._catalog.resolve(account_id, name)
        if model.engine is None:
            raise FailedPrecondition(
                f"Model {model.name!r} has no engine bound, so it cannot be served; the "
                "operator sets one in the catalog.",
                code="model_not_served",
                param="model",
            )
        if model.adapter is not None and not self._catalog.addon_deployed(account_id, model.name):
            raise FailedPrecondition(
                f"LoRA add-on {model.name!r} is not loaded for serving. Load it with "
                f"POST /v1/accounts/{account_id}/deployedModels "
                f'{{"model": "{model.name}"}}, then retry.',
                code="model_not_deployed",
                param="model",
            )
        return model

    def resolve_text(self, account_id: str, name: str) -> ModelRef:
        if self.deployments is not None and _is_deployment_name(name):
            return self._resolve_deployment(account_id, name)
        model = self._resolve(account_id, name)
        if model.kind not in (ModelKind.TEXT_BASE, ModelKind.LORA_ADDON):
            raise InvalidArgument(
                f"Model {model.name!r} is a {model.kind.name.lower()} model; chat and "
                "completions need a text model.",
                code="wrong_model_kind",
                param="model",
            )
        return self.ref(model, self._max_completion_tokens)

    def resolve_embedding(self, account_id: str, name: str) -> ModelRef:
        model = self._resolve(account_id, name)
        if model.kind is not ModelKind.EMBEDDING:
            raise InvalidArgument(
                f"Model {model.name!r} is not an embedding model; use one whose kind is "
                "EMBEDDING_MODEL.",
                code="wrong_model_kind",
                param="model",
            )
        return self.ref(model)

    @staticmethod
    def ref(
        model: ResolvedModel, max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS
    ) -> ModelRef:
        assert model.engine is not None
        adapter = None
        if model.adapter is not None:
            adapter = model.adapter.upstream_adapter or model.adapter.name
        engine_model = getattr(model.engine, "upstream_model", None) or (
            model.base_model or model.name
        )
        return ModelRef(
            name=model.name,
            kind=model.kind,
            binding=model.engine,
            engine_model=engine_model,
            adapter=adapter,
            billing_model=model.base_model or model.name,
            context_length=model.context_length or 0,
            vision=model.supports_image_input,
            adapter_path=model.adapter.path if model.adapter is not None else None,
            price_class=model.price_class.value if model.price_class is not None else None,
            explicit_price_micros=model.price_micro_usd,
            max_completion_tokens=max_completion_tokens,
        )
