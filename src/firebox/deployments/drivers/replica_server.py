"""What a Ray Serve replica answers: the OpenAI API over one of Firebox's engines.

The gateway reaches a deployment's replicas through the Serve proxy with its
``UpstreamEngine``, exactly as it reaches any OpenAI-compatible server, so
this side speaks the subset of the OpenAI wire that ``upstream_payload``
sends: ``POST {prefix}/v1/chat/completions`` and ``{prefix}/v1/completions``,
streaming (SSE, usage in the last chunk) or not. The gateway has validated,
authorised and admitted the request before; a replica trusts it and only
refuses what it cannot run (an unknown add-on, a prompt too long), with the
OpenAI error shape the gateway maps back to the user.

Ray-free on purpose: ``ray_app`` wraps it in a Serve deployment, and the
tests drive it directly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from firebox.errors import FireboxError, InvalidArgument, NotFound
from firebox.http.errors import error_body
from firebox.inference.engine import (
    ChoiceFinished,
    GenerationEvent,
    GenerationRequest,
    PromptInfo,
    SamplingParams,
    TextDelta,
    TextEngine,
    UsageReport,
    as_prompt_tokenizer,
)
from firebox.inference.responses import Shape, delta_chunk, finish_chunk, usage_chunk
from firebox.inference.run import ChoiceState

_SAMPLING_FLOATS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


def parse_request(kind: str, body: dict[str, Any], model: str) -> GenerationRequest:
    """A ``GenerationRequest`` from an OpenAI body; ``model`` is the replica's base model."""
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    floats: dict[str, float] = {}
    for key in _SAMPLING_FLOATS:
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int | float):
                raise InvalidArgument(f"{key} must be a number.", param=key)
            floats[key] = float(value)
    stop = body.get("stop") or ()
    stops = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
    logprobs = body.get("logprobs")
    if kind == "chat":
        want_logprobs, top = bool(logprobs), int(body.get("top_logprobs") or 0)
    else:
        want_logprobs, top = logprobs is not None, int(logprobs or 0)
    params = SamplingParams(
        max_tokens=_int_or_none(body.get("max_tokens")),
        top_k=int(body.get("top_k") or 0),
        stop=stops,
        seed=_int_or_none(body.get("seed")),
        logprobs=want_logprobs,
        top_logprobs=top,
        n=int(body.get("n") or 1),
        echo=bool(body.get("echo")),
        **floats,
    )
    name = body.get("model")
    adapter = name if isinstance(name, str) and name and name != model else None
    request_id = uuid.uuid4().hex
    stream = bool(body.get("stream"))
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidArgument("A chat request needs messages.", param="messages")
        return GenerationRequest(
            request_id, model, "chat", params, messages=messages, adapter=adapter, stream=stream
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str | list):
        raise InvalidArgument("A completion request needs a prompt.", param="prompt")
    return GenerationRequest(
        request_id, model, "completion", params, prompt=prompt, adapter=adapter, stream=stream
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def error_response(exc: FireboxError) -> Response:
    """The OpenAI-shaped error the gateway's upstream client reads back."""
    body = error_body(exc.message, exc.error_type, exc.code, exc.param, exc.status)
    return Response(orjson.dumps(body), status_code=exc.http_status, media_type="application/json")


class ReplicaServer:
    """Answers the OpenAI routes of one replica with ``engine``."""

    def __init__(
        self,
        engine: TextEngine,
        model: str,
        addons: set[str] | None = None,
        *,
        token_interval_s: float = 0.0,
        aliases: frozenset[str] = frozenset(),
    ) -> None:
        self.engine = engine
        self.model = model
        self.aliases = aliases  # other names of the base model (the deployment's own name)
        self.addons = addons if addons is not None else set()
        self.token_interval_s = token_interval_s  # pacing of streamed deltas (demos, tests)

    async def handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/v1/models"):
            data = [{"id": name, "object": "model"} for name in [self.model, *sorted(self.addons)]]
            return Response(orjson.dumps({"object": "list", "data": data}))
        if request.method != "POST":
            return error_response(NotFound(f"No route {request.method} {path}."))
        if path.endswith("/v1/chat/completions"):
            kind = "chat"
        elif path.endswith("/v1/completions"):
            kind = "completion"
        else:
            return error_response(NotFound(f"No route POST {path}."))
        try:
            body = orjson.loads(await request.body())
            generation = parse_request(kind, body, self.model)
            if generation.adapter in self.aliases:
                generation = replace(generation, adapter=None)
            if generation.adapter is not None and generation.adapter not in self.addons:
                raise NotFound(
                    f"Add-on {generation.adapter!r} is not placed on this deployment.",
                    code="adapter_not_found",
                    param="model",
                )
            generation = await self._tokenized(generation)
        except orjson.JSONDecodeError:
            return error_response(InvalidArgument("The request body is not JSON."))
        except (TypeError, ValueError) as exc:
            return error_response(InvalidArgument(f"Invalid request: {exc}"))
        except FireboxError as exc:
            return error_response(exc)
        shape = Shape(
            generation.kind, generation.request_id, str(body.get("model")), int(time.time())
        )
        events = self.engine.generate(generation)
        if generation.stream:
            return await self._stream(shape, events)
        return await self._whole(shape, events)

    async def _tokenized(self, request: GenerationRequest) -> GenerationRequest:
        tokenizer = as_prompt_tokenizer(self.engine)
        if tokenizer is None:
            return request
        prompt = await to_thread.run_sync(tokenizer.tokenize_prompt, request)
        return replace(request, tokenized=prompt)

    async def _whole(self, shape: Shape, events: AsyncIterator[GenerationEvent]) -> Response:
        choices: dict[int, ChoiceState] = {}
        usage: UsageReport | None = None
        try:
            async with _closing(events) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        choices.setdefault(event.index, ChoiceState()).add(event)
                    elif isinstance(event, ChoiceFinished):
                        choices.setdefault(
                            event.index, ChoiceState()
                        ).finish_reason = event.finish_reason
                    elif isinstance(event, UsageReport):
                        usage = event
        except FireboxError as exc:
            return error_response(exc)
        answer = {**shape.envelope(False), "choices": [], "usage": _usage(usage)}
        for index in sorted(choices):
            state = choices[index]
            text = "".join(state.text)
            reason = state.finish_reason or "stop"
            if shape.kind == "chat":
                choice: dict[str, Any] = {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": {"content": state.logprobs.get("content", [])}
                    if state.logprobs
                    else None,
                    "finish_reason": reason,
                }
            else:
                choice = {
                    "index": index,
                    "text": text,
                    "logprobs": state.logprobs or None,
                    "finish_reason": reason,
                }
            answer["choices"].append(choice)
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _stream(self, shape: Shape, stream: AsyncIterator[GenerationEvent]) -> Response:
        try:  # the first event before answering: an early error is a real HTTP error
            first: GenerationEvent | None = await anext(stream, None)
        except FireboxError as exc:
            await _close(stream)
            return error_response(exc)
        except BaseException:
            await _close(stream)
            raise

        async def chunks() -> AsyncIterator[bytes]:
            started: set[int] = set()
            try:
                event = first
                while event is not None:
                    chunk = _chunk(shape, event, started)
                    if chunk is not None:
                        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    if self.token_interval_s > 0 and isinstance(event, TextDelta):
                        await asyncio.sleep(self.token_interval_s)
                    event = await anext(stream, None)
                yield b"data: [DONE]\n\n"
            except FireboxError as exc:
                body = error_body(exc.message, exc.error_type, exc.code, exc.param, exc.status)
                yield b"data: " + orjson.dumps(body) + b"\n\n"
            finally:
                await _close(stream)

        return StreamingResponse(chunks(), media_type="text/event-stream")


async def _close(events: AsyncIterator[GenerationEvent]) -> None:
    """Close an engine's event iterator: the engine stops the generation."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


@asynccontextmanager
async def _closing(
    events: AsyncIterator[GenerationEvent],
) -> AsyncIterator[AsyncIterator[GenerationEvent]]:
    try:
        yield events
    finally:
        await _close(events)


def _chunk(shape: Shape, event: GenerationEvent, started: set[int]) -> dict[str, Any] | None:
    if isinstance(event, TextDelta):
        first = event.index not in started
        started.add(event.index)
        return delta_chunk(shape, event, first)
    if isinstance(event, ChoiceFinished):
        return finish_chunk(shape, event)
    if isinstance(event, UsageReport):
        return usage_chunk(shape, _usage(event), None)
    assert isinstance(event, PromptInfo)
    return None


def _usage(usage: UsageReport | None) -> dict[str, Any]:
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
