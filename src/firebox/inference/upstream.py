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
from contextlib import aclosing, suppress
from dataclasses import replace
from typing import Any

import httpx

from firebox.inference.engine import (
    ContextLengthExceeded,
    EmbeddingRequest,
    EmbeddingResult,
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    UpstreamError,
)
from firebox.inference.upstream_client import UpstreamClient
from firebox.inference.upstream_events import ChunkReader, as_chunk, local_usage
from firebox.inference.upstream_payload import build_body, prompt_text, request_path
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


class _UpstreamModel:
    """One model on the replicas of an upstream: the pooled client both engines share."""

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
        self._api_key, self._timeout_s = api_key, timeout_s  # for the LoRA adapter calls
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

    async def close(self) -> None:
        """Close the connections to every replica."""
        await self._client.close()


class UpstreamEngine(_UpstreamModel):
    """A ``TextEngine`` that runs every request on an OpenAI-compatible upstream.

    ``replicas`` are base URLs such as ``http://10.0.0.5:8000/v1``; ``model``
    is the upstream's model id (a request for a LoRA add-on is sent with the
    adapter's name instead). ``timeout_s`` bounds each wait for the upstream
    (connecting, or the next bytes of the stream), not the whole generation.
    ``count_tokens`` is the model's tokenizer, used only when the upstream
    reports no usage; without it usage is estimated (see ``local_usage``) and
    a warning logged once per engine.
    """

    capabilities = UPSTREAM_CAPABILITIES
    _warned_estimate = False  # set on the instance after the first estimate is logged

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream ``request``'s events; one ``UsageReport`` comes last."""
        request = self._fit_context(request)
        body = build_body(request, self.model)
        reader = ChunkReader(chat=request.kind == "chat")
        if not request.stream:
            # The caller wants the whole answer: ask for it whole, which costs the
            # upstream and the gateway less than a stream reassembled here.
            answer = await self._client.post_json(request_path(request), body)
            for event in reader.read(as_chunk(answer, chat=request.kind == "chat")):
                yield event
        else:
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

    def _fit_context(self, request: GenerationRequest) -> GenerationRequest:
        """Check prompt + max_tokens against the context, when the tokenizer is known.

        The count leaves out the chat template's few tokens, so the upstream
        still has the last word; this catches the clear cases early with a
        message that states both numbers, and applies
        ``context_length_exceeded_behavior: "truncate"`` by capping max_tokens.
        """
        limit = request.context_length
        max_tokens = request.params.max_tokens
        if self._count_tokens is None or limit <= 0 or max_tokens is None:
            return request
        ids = request.prompt if isinstance(request.prompt, list) else None
        prompt = len(ids) if ids is not None else self._count_tokens(prompt_text(request))
        if prompt + max_tokens <= limit:
            return request
        if not request.truncate_max_tokens or prompt >= limit:
            raise ContextLengthExceeded(prompt, max_tokens, limit)
        params = replace(request.params, max_tokens=limit - prompt)
        return replace(request, params=params)

    async def load_adapter(self, name: str, path: str | None) -> None:
        """Load the LoRA adapter in folder ``path`` as model ``name`` on every replica.

        Uses vLLM's runtime LoRA API (the server runs with ``--enable-lora``
        and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). Without a path there is
        nothing to do: the upstream serves the adapter from its own start
        (``--lora-modules``). A replica that has it already counts as done.
        If a replica refuses, those that loaded it unload it again and the
        error is a 502 naming the replica and its answer.
        """
        if path is None:
            return
        loaded: list[str] = []
        for url in self.pool.urls:
            try:
                await self._adapter_call(url, "load", {"lora_name": name, "lora_path": path})
            except UpstreamError:
                for done in loaded:
                    with suppress(UpstreamError):
                        await self._adapter_call(done, "unload", {"lora_name": name})
                raise
            loaded.append(url)

    async def unload_adapter(self, name: str) -> None:
        """Unload the LoRA adapter ``name`` from every replica (vLLM's runtime LoRA API).

        A replica that does not have it counts as done, so a failed unload can
        simply be retried. Every replica is tried; the first refusal is raised.
        """
        failure: UpstreamError | None = None
        for url in self.pool.urls:
            try:
                await self._adapter_call(url, "unload", {"lora_name": name})
            except UpstreamError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _adapter_call(self, url: str, verb: str, body: dict[str, str]) -> None:
        """POST ``{url}/{verb}_lora_adapter``; an error that means "done already" is success."""
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        name = body["lora_name"]
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout_s, headers=headers, trust_env=False
            ) as client:
                resp = await client.post(f"{url}/{verb}_lora_adapter", json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"Could not {verb} LoRA adapter {name!r} on the model server {url}: "
                f"{type(exc).__name__} {exc}. Check that it is up, then retry.",
                code="adapter_update_failed",
            ) from exc
        if resp.status_code == 200:
            return
        message = _error_message(resp)
        if verb == "load" and resp.status_code == 400 and "already been loaded" in message:
            return
        if verb == "unload" and resp.status_code == 404 and name in message:
            return
        where = f" from {body['lora_path']!r}" if "lora_path" in body else ""
        raise UpstreamError(
            f"The model server {url} refused to {verb} LoRA adapter {name!r}{where}: HTTP "
            f"{resp.status_code}: {message}. It needs --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and must be able to read the adapter.",
            code="adapter_update_failed",
        )


def _error_message(resp: httpx.Response) -> str:
    """The message of an error answer: vLLM's ``message`` (flat or under ``error``), or text."""
    try:
        data: Any = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase
    if isinstance(data, dict):
        inner = data.get("error")
        for source in (inner, data):
            if isinstance(source, dict):
                for key in ("message", "detail"):
                    if isinstance(source.get(key), str):
                        return str(source[key])
    return resp.text[:300]


class UpstreamEmbeddingEngine(_UpstreamModel):
    """An ``EmbeddingEngine`` over an OpenAI-compatible ``/embeddings`` endpoint.

    Shares the text engine's balancing, failover and error mapping. Vectors
    are requested as floats; ``prompt_tokens`` is the upstream's count (or,
    if it reports none, ``count_tokens`` over the inputs, else an estimate of
    one token per four UTF-8 bytes).
    """

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
