"""Engine bindings: which engine serves a model, as the inference router reads them.

Plain frozen dataclasses, free of HTTP and SQL, so the router and engines can
use them without the catalog's wire or table models. Stored as JSON in the
model's row; set by the operator only (a binding names URLs the gateway will
call, so a user must not be able to point it anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_UPSTREAM_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class LocalEngine:
    """The in-process engine (text or embedding, by the model's kind).

    ``path`` is a folder of weights; None lets the engine find its bundled weights.
    """

    path: str | None = None
    type: Literal["local"] = "local"


@dataclass(frozen=True, slots=True)
class UpstreamEngine:
    """Any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, Ollama).

    ``urls`` are base URLs ending before ``/chat/completions`` (e.g.
    ``http://gpu-1:8000/v1``); several mean replicas of the same model.
    ``upstream_model`` is the model name that server knows.
    """

    urls: tuple[str, ...]
    upstream_model: str
    api_key: str | None = None
    timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S
    tokenizer: str | None = None  # the model's tokenizer.json (or its folder), for counting
    type: Literal["upstream"] = "upstream"


EngineBinding = LocalEngine | UpstreamEngine


def binding_to_json(binding: EngineBinding) -> dict[str, Any]:
    """The JSON stored in the ``models.engine`` column."""
    if isinstance(binding, LocalEngine):
        return {"type": "local", "path": binding.path}
    return {
        "type": "upstream",
        "urls": list(binding.urls),
        "upstreamModel": binding.upstream_model,
        "apiKey": binding.api_key,
        "timeoutS": binding.timeout_s,
        "tokenizer": binding.tokenizer,
    }


def binding_from_json(data: dict[str, Any] | None) -> EngineBinding | None:
    """The binding stored by ``binding_to_json`` (None when the model has none)."""
    if not data:
        return None
    if data.get("type") == "local":
        return LocalEngine(path=data.get("path"))
    if data.get("type") == "upstream":
        return UpstreamEngine(
            urls=tuple(data["urls"]),
            upstream_model=str(data["upstreamModel"]),
            api_key=data.get("apiKey"),
            timeout_s=float(data.get("timeoutS", DEFAULT_UPSTREAM_TIMEOUT_S)),
            tokenizer=data.get("tokenizer"),
        )
    raise ValueError(f"unknown engine binding type {data.get('type')!r}")
