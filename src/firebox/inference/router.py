"""The router: from a model's engine binding to a running engine.

Engines are made on first use and kept, one per binding, so every model
bound to the same upstream shares one connection pool, and every add-on of a
local base shares that base's weights. Making a local engine loads weights:
that happens in a worker thread, never on the event loop.

When a LoRA add-on is loaded or unloaded (``deployedModels``), the router
tells the engine serving its base, if that engine takes adapters at run
time: ``load_adapter``/``unload_adapter`` (an upstream: vLLM's runtime LoRA
API) or ``register_adapter`` (the in-process engine, which is also told on
first use, so a restart loses nothing).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

from anyio import to_thread

from firebox.catalog.binding import EngineBinding, LocalEngine, UpstreamEngine
from firebox.catalog.index import ResolvedModel
from firebox.errors import FailedPrecondition, ServiceUnavailable
from firebox.inference.engine import EmbeddingEngine, TextEngine
from firebox.inference.models import ModelRef, ModelResolver


@runtime_checkable
class AdapterLoading(Protocol):
    """A text engine that loads and drops LoRA adapters at run time (an upstream)."""

    async def load_adapter(self, name: str, path: str | None) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...


@runtime_checkable
class AdapterRegistry(Protocol):
    """A text engine that is told where an adapter's files are (the in-process engine)."""

    def register_adapter(self, name: str, path: str) -> None: ...


class DeploymentEngines(Protocol):
    """The engines of on-demand deployments (the deployment driver)."""

    def engine(self, name: str) -> TextEngine: ...


class EngineFactory(Protocol):
    """Builds engines for bindings (the real one below; tests may pass their own)."""

    def text(self, binding: EngineBinding, model: ModelRef) -> TextEngine: ...

    def embedding(self, binding: EngineBinding, model: ModelRef) -> EmbeddingEngine: ...


class DefaultEngineFactory:
    """Upstream servers over HTTP; the in-process engines of ``inference.local``.

    A relative ``path`` in a local binding is a folder under ``models_dir``
    (``FIREBOX_MODELS_DIR``), where the bundled demo models live.
    """

    def __init__(self, models_dir: Path | None = None) -> None:
        self.models_dir = models_dir

    def resolve_path(self, path: str) -> str:
        """An absolute path: ``path`` itself, or ``path`` under the models folder."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or self.models_dir is None:
            return str(candidate)
        return str(self.models_dir / candidate)

    def text(self, binding: EngineBinding, model: ModelRef) -> TextEngine:
        if isinstance(binding, UpstreamEngine):
            from firebox.inference.token_counter import load_counter
            from firebox.inference.upstream import UpstreamEngine as Upstream

            return Upstream(
                list(binding.urls),
                binding.upstream_model,
                api_key=binding.api_key,
                timeout_s=binding.timeout_s,
                count_tokens=load_counter(binding.tokenizer) if binding.tokenizer else None,
            )
        if binding.path is None:
            raise FailedPrecondition(
                f"Model {model.name!r} is bound to the in-process engine without a path; "
                "the operator sets the folder of its weights in the catalog.",
                code="model_path_missing",
            )
        from firebox.inference.local.text_engine import LocalTextEngine

        folder = self.resolve_path(binding.path)
        try:
            return LocalTextEngine.load(folder)
        except OSError as exc:
            raise ServiceUnavailable(
                f"The in-process engine cannot load {model.name!r} from {folder!r}: {exc}",
                code="engine_unavailable",
            ) from exc

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

        path = self.resolve_path(binding.path) if binding.path else default_model_path()
        return SentenceEmbeddingEngine(path)


class EngineRouter:
    """Hands out the engine serving a model, creating it on first use."""

    def __init__(self, factory: EngineFactory, models_dir: Path | None = None) -> None:
        self._factory = factory
        self._models_dir = models_dir
        self._text: dict[EngineBinding, TextEngine] = {}
        self._embedding: dict[EngineBinding, EmbeddingEngine] = {}
        self._registered: set[tuple[EngineBinding, str, str]] = set()
        self._retired: list[TextEngine] = []  # closed on the next call from the event loop
        self._lock = threading.Lock()
        self.deployments: DeploymentEngines | None = None  # set by services.py

    async def text_engine(self, model: ModelRef) -> TextEngine:
        """The engine serving ``model``; made (weights loaded) in a worker thread on first use."""
        if model.deployment is not None and self.deployments is not None:
            return self.deployments.engine(model.deployment)
        if self._retired:
            await self._close_retired()
        engine = self._text.get(model.binding)
        if engine is None:
            engine = await to_thread.run_sync(self._make_text, model)
        if model.adapter_path is not None and isinstance(engine, AdapterRegistry):
            self._register(engine, model)
        return engine

    def _make_text(self, model: ModelRef) -> TextEngine:
        with self._lock:
            engine = self._text.get(model.binding)
            if engine is None:
                engine = self._factory.text(model.binding, model)
                self._text[model.binding] = engine
            return engine

    async def load_adapter(self, addon: ResolvedModel) -> None:
        """Tell the engine serving the LoRA add-on ``addon``'s base to load it."""
        ref = _adapter_ref(addon)
        if ref is None or ref.adapter is None:
            return
        engine = await self.text_engine(ref)
        if isinstance(engine, AdapterLoading):
            await engine.load_adapter(ref.adapter, ref.adapter_path)
        elif isinstance(engine, AdapterRegistry) and ref.adapter_path is None:
            raise FailedPrecondition(
                f"LoRA add-on {addon.name!r} has no adapterPath, and the in-process engine "
                "serving its base needs the adapter's folder; the operator sets adapterPath "
                "in the catalog.",
                code="adapter_path_missing",
                param="model",
            )

    async def unload_adapter(self, addon: ResolvedModel) -> None:
        """Tell the engine serving ``addon``'s base to drop it, if it loaded it at run time."""
        ref = _adapter_ref(addon)
        if ref is None or ref.adapter is None or ref.adapter_path is None:
            return  # an adapter the engine has from its own start is not ours to drop
        engine = self._text.get(ref.binding)
        if engine is None and isinstance(ref.binding, UpstreamEngine):
            engine = await self.text_engine(ref)  # no weights to load; the upstream may hold it
        if isinstance(engine, AdapterLoading):
            await engine.unload_adapter(ref.adapter)

    def _register(self, engine: AdapterRegistry, model: ModelRef) -> None:
        assert model.adapter is not None and model.adapter_path is not None
        key = (model.binding, model.adapter, model.adapter_path)
        if key in self._registered:
            return
        path = model.adapter_path
        if self._models_dir is not None and not Path(path).expanduser().is_absolute():
            path = str(self._models_dir / path)
        try:
            engine.register_adapter(model.adapter, path)
        except (OSError, ValueError) as exc:
            raise ServiceUnavailable(
                f"The in-process engine cannot read LoRA add-on {model.name!r} from "
                f"{model.adapter_path!r}: {exc}. The operator fixes adapterPath in the catalog.",
                code="adapter_unavailable",
            ) from exc
        self._registered.add(key)

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

    def retire_under(self, folder: Path) -> None:
        """Forget the in-process text engines whose weights lie in ``folder`` (a deleted model).

        Callable from any thread; the engines are closed (their memory freed)
        on the next engine request, or at ``close``.
        """
        with self._lock:
            for binding in list(self._text):
                path = binding.path if isinstance(binding, LocalEngine) else None
                if path is not None and Path(path).is_relative_to(folder):
                    self._retired.append(self._text.pop(binding))

    def text_bindings(self) -> list[EngineBinding]:
        """The bindings whose text engine is loaded now."""
        with self._lock:
            return list(self._text)

    async def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for engine in retired:
            await engine.close()

    async def close(self) -> None:
        """Close every engine made so far."""
        with self._lock:
            engines: list[TextEngine | EmbeddingEngine] = [
                *self._text.values(),
                *self._embedding.values(),
                *self._retired,
            ]
            self._text.clear()
            self._embedding.clear()
            self._retired.clear()
        for engine in engines:
            await engine.close()


def _adapter_ref(addon: ResolvedModel) -> ModelRef | None:
    """How ``addon`` is served, or None for a model that is no add-on or has no engine."""
    if addon.adapter is None or addon.engine is None:
        return None
    return ModelResolver.ref(addon)
