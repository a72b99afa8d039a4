"""How the ``local`` driver makes one replica's engine for a deployment.

A replica of a base model bound to the in-process engine is a fresh
``LocalTextEngine`` over the model's folder (its own weights, KV cache and
scheduler thread), so replicas are independent the way Ray Serve's are; a
base model bound to an upstream server gets an upstream client per replica.
The KV cache is sized per replica (``kv_cache_tokens``), not "most of the
RAM", since a node runs several.
"""

from __future__ import annotations

from pathlib import Path

from firebox.catalog.binding import LocalEngine
from firebox.deployments.drivers.base import DeploymentTarget
from firebox.deployments.drivers.local import EngineMaker
from firebox.errors import FailedPrecondition
from firebox.inference.engine import EngineCapabilities, TextEngine
from firebox.inference.models import ModelResolver
from firebox.inference.router import DefaultEngineFactory


def local_engine_maker(
    models_dir: Path | None,
    *,
    kv_cache_tokens: int = 16_384,
    num_threads: int | None = None,
) -> EngineMaker:
    """An ``EngineMaker`` for ``LocalDriver`` (blocking; the driver calls it in a thread)."""
    factory = DefaultEngineFactory(models_dir)

    def make(target: DeploymentTarget) -> TextEngine:
        model = target.base_model
        binding = model.engine
        if binding is None:
            raise FailedPrecondition(
                f"Model {model.name!r} has no engine bound; the operator sets one in the catalog.",
                code="model_not_served",
            )
        if isinstance(binding, LocalEngine) and binding.path is not None:
            from firebox.inference.local.text_engine import LocalTextEngine

            tokens = kv_cache_tokens
            if target.max_context_length:
                tokens = max(tokens, target.max_context_length)
            return LocalTextEngine.load(
                factory.resolve_path(binding.path),
                kv_cache_tokens=tokens,
                num_threads=num_threads,
            )
        return factory.text(binding, ModelResolver.ref(model))

    return make


def local_capabilities() -> EngineCapabilities:
    """What a local replica honours, known before any replica runs (a deployment at zero)."""
    from firebox.inference.local.text_engine import LOCAL_TEXT_CAPABILITIES

    return LOCAL_TEXT_CAPABILITIES
