"""Any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, Ollama) as an engine.

``UpstreamEngine`` forwards each request to one of the upstream's replicas
and streams the answer back chunk by chunk: nothing is buffered, so the
first token reaches the user as soon as the upstream produced it. Closing
the event iterator (``aclose``, or cancelling the task that reads it) closes
the HTTP response at once, and the upstream aborts the generation on the
disconnect, so a user who goes away stops paying for tokens.

The pieces live beside this module: ``upstream_pool`` (balancing and
ejection), ``upstream_client`` (HTTP, failover), ``upstream_errors`` (what a
failure means), ``upstream_sse`` (stream decoding), ``upstream_payload``
(request bodies), ``upstream_events`` (chunks to events, usage).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing

from firebox.inference.engine import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    UpstreamError,
)
from firebox.inference.upstream_client import UpstreamClient
from firebox.inference.upstream_events import ChunkReader, local_usage
from firebox.inference.upstream_payload import build_body, request_path
from firebox.inference.upstream_pool import ReplicaPool
from firebox.inference.upstream_sse import MalformedStream

logger = logging.getLogger(__name__)

_PASSTHROUGH = frozenset(
    {"tools", "tool_choice", "response_format", "logit_bias", "parallel_tool_calls"}
)
_CORE_SAMPLING = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    }
)

UPSTREAM_CAPABILITIES = EngineCapabilities(
    params=_CORE_SAMPLING
    | _PASSTHROUGH
    | {"logprobs", "top_logprobs", "echo", "seed", "stop", "n"},
    passthrough=_PASSTHROUGH,
    vision=True,  # images pass through in the messages; the upstream decides
)


def _client(
    replicas: Sequence[str],
    *,
    api_key: str | None,
    timeout_s: float,
    connect_timeout_s: float | None,
    max_connections: int,
    base_ejection_s: float,
    max_ejection_s: float,
    monotonic: Callable[[], float],
) -> UpstreamClient:
    pool = ReplicaPool(
        replicas,
        base_ejection_s=base_ejection_s,
        max_ejection_s=max_ejection_s,
        monotonic=monotonic,
    )
    return UpstreamClient(
        pool,
        api_key=api_key,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        max_connections=max_connections,
    )


class UpstreamEngine:
    """A ``TextEngine`` that runs every request on an OpenAI-compatible upstream.

    ``replicas`` are base URLs such as ``http://10.0.0.5:8000/v1``; ``model``
    is the upstream's model id (a request for a LoRA add-on is sent with the
    adapter's name instead). ``timeout_s`` bounds each wait for the upstream
    (connecting, or the next bytes of the stream), not the whole generation.
    ``count_tokens`` is the model's tokenizer, used only when the upstream
    reports no usage; without it usage is estimated (see ``local_usage``) and
    a warning logged once per engine.
    """

    def __init__(
        self,
        replicas: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
        count_tokens: Callable[[str], int] | None = None,
        max_connections: int = 512,
        base_ejection_s: float = 1.0,
        max_ejection_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.capabilities = UPSTREAM_CAPABILITIES
        self._count_tokens = count_tokens
        self._warned_estimate = False
        self._client = _client(
            replicas,
            api_key=api_key,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            base_ejection_s=base_ejection_s,
            max_ejection_s=max_ejection_s,
            monotonic=monotonic,
        )

    @property
    def pool(self) -> ReplicaPool:
        """The replicas' balancing and health state."""
        return self._client.pool

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream ``request``'s events; one ``UsageReport`` comes last."""
        body = build_body(request, self.model)
        reader = ChunkReader(chat=request.kind == "chat")
        async with aclosing(self._client.stream(request_path(request), body)) as chunks:
            async for chunk in chunks:
                for event in reader.read(chunk):
                    yield event
        if reader.unfinished:
            raise UpstreamError(
                "The model server ended its answer early (choices "
                f"{sorted(reader.unfinished)} never finished). Retry the request."
            )
        if reader.usage is not None:
            yield reader.usage
            return
        usage, estimated = local_usage(request, reader, self._count_tokens)
        if estimated and not self._warned_estimate:
            self._warned_estimate = True
            logger.warning(
                "upstream %s reports no usage and no tokenizer was given: token counts "
                "for billing are estimated (prompt: 4 bytes a token; completion: a token "
                "a chunk)",
                self.model,
            )
        yield usage

    async def close(self) -> None:
        """Close the connections to every replica."""
        await self._client.close()


class UpstreamEmbeddingEngine:
    """An ``EmbeddingEngine`` over an OpenAI-compatible ``/embeddings`` endpoint.

    Shares the text engine's balancing, failover and error mapping. Vectors
    are requested as floats; ``prompt_tokens`` is the upstream's count (or,
    if it reports none, ``count_tokens`` over the inputs, else an estimate of
    one token per four UTF-8 bytes).
    """

    def __init__(
        self,
        replicas: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
        count_tokens: Callable[[str], int] | None = None,
        max_connections: int = 512,
        base_ejection_s: float = 1.0,
        max_ejection_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self._count_tokens = count_tokens
        self._client = _client(
            replicas,
            api_key=api_key,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            base_ejection_s=base_ejection_s,
            max_ejection_s=max_ejection_s,
            monotonic=monotonic,
        )

    @property
    def pool(self) -> ReplicaPool:
        """The replicas' balancing and health state."""
        return self._client.pool

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed every input, in order."""
        body: dict[str, object] = {
            "model": self.model,
            "input": request.inputs,
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        answer = await self._client.post_json("embeddings", body)
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != len(request.inputs):
            raise MalformedStream(
                f"The model server returned {len(data) if isinstance(data, list) else 'no'} "
                f"embeddings for {len(request.inputs)} inputs."
            )
        vectors: list[list[float]] = []
        for item in sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0):
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(vector, list):
                raise MalformedStream("The model server returned an embedding that is not a list.")
            vectors.append([float(x) for x in vector])
        usage = answer.get("usage")
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(prompt_tokens, int):
            prompt_tokens = self._count_inputs(request)
        return EmbeddingResult(vectors=vectors, prompt_tokens=prompt_tokens)

    def _count_inputs(self, request: EmbeddingRequest) -> int:
        total = 0
        for item in request.inputs:
            if isinstance(item, list):
                total += len(item)
            elif self._count_tokens is not None:
                total += self._count_tokens(item)
            else:
                total += math.ceil(len(item.encode()) / 4)
        return total

    async def close(self) -> None:
        """Close the connections to every replica."""
        await self._client.close()
