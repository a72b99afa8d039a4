"""The router: from a model's engine binding to a running engine.

Engines are made on first use and kept, one per binding, so every model
bound to the same upstream shares one connection pool, and every add-on of a
local base shares that base's weights. Making a local engine loads weights:
that happens in a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
from typing import Protocol

from anyio import to_thread

from firebox.catalog.binding import EngineBinding, LocalEngine, UpstreamEngine
from firebox.errors import ServiceUnavailable
from firebox.inference.engine import EmbeddingEngine, TextEngine
from firebox.inference.models import ModelRef


class EngineFactory(Protocol):
    """Builds engines for bindings (the real one below; tests may pass their own)."""

    def text(self, binding: EngineBinding, model: ModelRef) -> TextEngine: ...

    def embedding(self, binding: EngineBinding, model: ModelRef) -> EmbeddingEngine: ...


class DefaultEngineFactory:
    """Upstream servers over HTTP; the in-process engines of ``inference.local``."""

    def text(self, binding: EngineBinding, model: ModelRef) -> TextEngine:
        if isinstance(binding, UpstreamEngine):
            from firebox.inference.upstream import UpstreamEngine as Upstream

            return Upstream(
                list(binding.urls),
                binding.upstream_model,
                api_key=binding.api_key,
                timeout_s=binding.timeout_s,
            )
        raise ServiceUnavailable(
            f"Model {model.name!r} is bound to the in-process text engine, which this "
            "server does not run; bind the model to an upstream engine.",
            code="engine_unavailable",
        )

    def embedding(self, binding: EngineBinding, model: ModelRef) -> EmbeddingEngine:
        if isinstance(binding, UpstreamEngine):
            from firebox.inference.upstream import UpstreamEmbeddingEngine

            return UpstreamEmbeddingEngine(
                list(binding.urls),
                binding.upstream_model,
                api_key=binding.api_key,
                timeout_s=binding.timeout_s,
            )
        assert isinstance(binding, LocalEngine)
        from firebox.inference.local.embedding import SentenceEmbeddingEngine, default_model_path

        return SentenceEmbeddingEngine(binding.path or default_model_path())


class EngineRouter:
    """Hands out the engine serving a model, creating it on first use."""

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._text: dict[EngineBinding, TextEngine] = {}
        self._embedding: dict[EngineBinding, EmbeddingEngine] = {}
        self._lock = threading.Lock()

    def text_engine(self, model: ModelRef) -> TextEngine:
        engine = self._text.get(model.binding)
        if engine is None:
            with self._lock:
                engine = self._text.get(model.binding)
                if engine is None:
                    engine = self._factory.text(model.binding, model)
                    self._text[model.binding] = engine
        return engine

    async def embedding_engine(self, model: ModelRef) -> EmbeddingEngine:
        engine = self._embedding.get(model.binding)
        if engine is None:
            engine = await to_thread.run_sync(self._make_embedding, model)
        return engine

    def _make_embedding(self, model: ModelRef) -> EmbeddingEngine:
        with self._lock:
            engine = self._embedding.get(model.binding)
            if engine is None:
                engine = self._factory.embedding(model.binding, model)
                self._embedding[model.binding] = engine
            return engine

    async def close(self) -> None:
        """Close every engine made so far."""
        with self._lock:
            engines: list[TextEngine | EmbeddingEngine] = [
                *self._text.values(),
                *self._embedding.values(),
            ]
            self._text.clear()
            self._embedding.clear()
        for engine in engines:
            await engine.close()
