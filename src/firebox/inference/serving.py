"""Chat and completions: validate against the model and engine, run, answer, meter.

Shared by the chat and completions routes; the wire shapes of each live in
``responses.py``. Exactly one usage record is emitted per admitted request,
from the ``finally`` of the run, whatever way it ends.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import anyio

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.errors import FireboxError, InvalidArgument
from firebox.inference import responses
from firebox.inference.admission import Admission, OpenAdmission, Ticket
from firebox.inference.demand import generation_demand
from firebox.inference.engine import (
    ChoiceFinished,
    GenerationEvent,
    GenerationRequest,
    PromptTokenizer,
    SamplingParams,
    TextDelta,
    TextEngine,
    as_prompt_tokenizer,
)
from firebox.inference.metering import (
    NoJournal,
    Opened,
    Outcome,
    Progress,
    UsageJournal,
    UsageRecord,
    UsageSink,
)
from firebox.inference.models import ModelRef, ModelResolver
from firebox.inference.priority import InteractiveTraffic
from firebox.inference.prompt_size import check_prompt_bytes, prompt_bytes
from firebox.inference.protocol import ChatCompletionRequest, CompletionRequest
from firebox.inference.router import EngineRouter
from firebox.inference.run import GenerationRun
from firebox.inference.tokenizer_pool import TokenizerPool

log = logging.getLogger("firebox.inference")

IMAGE_PROMPT_TOKENS = 576  # SPEC §2: each image in a prompt is billed as 576 prompt tokens

Body = ChatCompletionRequest | CompletionRequest
MeteredKind = Literal["chat", "completion", "batch"]


@dataclass
class Answer:
    """A finished, non-streaming answer."""

    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class StreamingAnswer:
    """Headers known before the first chunk, and the chunks (OpenAI dicts).

    ``close`` must be called once the response is over, however it ended: if
    the client left before the body started, ``chunks`` never ran (so neither
    did its ``finally``), and ``close`` is what ends the engine run, meters
    what was produced and settles the admission ticket.
    """

    headers: dict[str, str]
    chunks: AsyncIterator[dict[str, Any]]
    close: Callable[[], Awaitable[None]]


class InferenceService:
    """Serves chat and completion requests for any model in the catalog."""

    def __init__(
        self,
        models: ModelResolver,
        router: EngineRouter,
        usage: UsageSink,
        clock: Clock,
        admission: Admission | None = None,
        tokenizers: TokenizerPool | None = None,
        max_prompt_bytes: int = 4 * 1024 * 1024,
        journal: UsageJournal | None = None,
        traffic: InteractiveTraffic | None = None,
    ) -> None:
        self._models = models
        self._router = router
        self._usage = usage
        self._clock = clock
        self._admission = admission or OpenAdmission()
        self._tokenizers = tokenizers or TokenizerPool()
        self._max_prompt_bytes = max_prompt_bytes
        self._journal = journal or NoJournal()
        # Interactive requests in flight: batch jobs wait for a lull (inference/priority.py).
        self.traffic = traffic or InteractiveTraffic()

    async def generate(
        self,
        principal: Principal,
        body: Body,
        request_id: str,
        *,
        batch: bool = False,
        background: bool = True,
    ) -> Answer | StreamingAnswer:
        """Answer a chat (``ChatCompletionRequest``) or completions request.

        ``batch``: a request of a batch inference job (``finetune/batch_runner.py``):
        metered as kind ``batch`` (the price book's batch share), not rate-limited,
        and not counted as interactive traffic; ``background``: its engine requests run
        only in steps with no interactive request (``GenerationRequest.background``).
        """
        principal.require(principal.account_id, Permission.INFERENCE)
        kind: Literal["chat", "completion"] = (
            "chat" if isinstance(body, ChatCompletionRequest) else "completion"
        )
        model = self._models.resolve_text(principal.account_id, body.model)
        engine = await self._router.text_engine(model)
        images = body.image_count() if isinstance(body, ChatCompletionRequest) else 0
        self._check(body, model, engine, images)
        # A chat's messages as dicts, made once: measured, sent to the engine, bounded.
        messages = (
            [m.model_dump(exclude_none=True) for m in body.messages]
            if isinstance(body, ChatCompletionRequest)
            else None
        )
        size = prompt_bytes(body, messages)
        check_prompt_bytes(size, self._max_prompt_bytes, "messages" if kind == "chat" else "prompt")
        requests = self._engine_requests(body, kind, model, request_id, messages)
        if batch and background:
            requests = [replace(r, background=True) for r in requests]
        prompt_tokens: int | None = None
        tokenizer = as_prompt_tokenizer(engine)
        if tokenizer is not None:
            requests = await self._tokenize(principal.account_id, tokenizer, requests, size)
            prompt_tokens = sum(len(r.tokenized.ids) for r in requests if r.tokenized)
        demand = generation_demand(
            body, model, principal.account_id, request_id, images, prompt_tokens, size
        )
        if batch:
            demand = replace(demand, kind="batch")
        ticket = await self._admission.admit(principal, demand)
        try:
            requests = _capped(requests, ticket.completion_cap)
            run = GenerationRun(engine, requests, body.n)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await ticket.settle(None)
            raise
        usage_kind: MeteredKind = "batch" if batch else kind
        meter = _Meter(
            self._usage, self._clock, principal, model, usage_kind, request_id, images, ticket
        )
        meter.progress.run = run  # the journal reads the prompt counts there
        # Journaled before the engine runs: if this process dies, a later one closes the ticket's
        # hold and bills what the stream delivered (billing/journal.py). The entry (record and
        # hold) is built by the journal's flusher, only if the request is still running then.
        meter.journal = self._journal
        self._journal.track(meter.progress, meter.opened)
        if not batch:
            self.traffic.enter()
            meter.traffic = self.traffic  # leaves when its record is emitted
        shape = responses.Shape(kind, request_id, body.model, int(time.time()))
        if body.stream:
            return await self._stream(run, meter, shape, body)
        return await self._complete(run, meter, shape, body)

    async def _tokenize(
        self,
        account_id: str,
        engine: PromptTokenizer,
        requests: list[GenerationRequest],
        size: int,
    ) -> list[GenerationRequest]:
        """``requests`` with their prompts tokenized on the pool, checked against the context.

        Runs before admission so that the demand holds the exact prompt count,
        and the engine does not tokenize again.
        """
        share = max(size // max(len(requests), 1), 1)  # each prompt's part, for the inline rule
        done = []
        for request in requests:
            tokenized = await self._tokenizers.run(
                account_id, share, functools.partial(engine.tokenize_prompt, request)
            )
            done.append(replace(request, tokenized=tokenized))
        return done

    def _check(self, body: Body, model: ModelRef, engine: TextEngine, images: int) -> None:
        """Refuse what the model or its engine cannot do, naming the parameter."""
        if images and not model.vision:
            raise InvalidArgument(
                f"Model {model.name!r} does not accept images; remove the image_url parts "
                "or use a vision model.",
                code="images_not_supported",
                param="messages",
            )
        for name in body.optional_params_used():
            if name not in engine.capabilities.params:
                raise InvalidArgument(
                    f"Parameter {name!r} is not supported by the engine serving "
                    f"{model.name!r}; remove it.",
                    code="unsupported_parameter",
                    param=name,
                )
        body.check_vocabulary(engine.capabilities.vocab_size)
        if body.echo and body.stream and isinstance(body, CompletionRequest):
            raise InvalidArgument("echo cannot be combined with stream.", param="echo")

    def _engine_requests(
        self,
        body: Body,
        kind: Literal["chat", "completion"],
        model: ModelRef,
        request_id: str,
        messages: list[dict[str, Any]] | None,
    ) -> list[GenerationRequest]:
        top_logprobs = body.top_logprobs or 0
        wants_logprobs = (
            body.logprobs if isinstance(body, ChatCompletionRequest) else body.logprobs is not None
        )
        if isinstance(body, CompletionRequest) and body.logprobs:
            top_logprobs = body.logprobs
        # Without max_tokens a choice may generate the model's default bound (what
        # admission reserved for), or up to the end of the context if that comes first;
        # a context no longer than the default is left to the engine (its rest is less).
        explicit = body.token_limit()
        max_tokens = explicit
        if explicit is None and not 0 < model.context_length <= model.max_completion_tokens:
            max_tokens = model.max_completion_tokens
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),  # -1 and 0 both disable it
            min_p=body.min_p or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=body.repetition_penalty or 1.0,
            stop=body.stops(),
            seed=body.seed,
            logprobs=bool(wants_logprobs),
            top_logprobs=top_logprobs,
            n=body.n,
            echo=body.echo,
        )
        common: dict[str, Any] = {
            "model": model.engine_model,
            "kind": kind,
            "params": params,
            "adapter": model.adapter,
            "context_length": model.context_length,
            "truncate_max_tokens": explicit is None
            or body.context_length_exceeded_behavior == "truncate",
            "prompt_cache_max_len": body.prompt_cache_max_len,
            "extra": body.passthrough(),
            "stream": body.stream,
        }
        if messages is not None:
            return [GenerationRequest(request_id=request_id, messages=messages, **common)]
        assert isinstance(body, CompletionRequest)
        prompts: list[str | list[int]] = list(body.prompts())
        return [
            GenerationRequest(
                request_id=f"{request_id}-{i}" if i else request_id, prompt=p, **common
            )
            for i, p in enumerate(prompts)
        ]

    async def _complete(
        self, run: GenerationRun, meter: _Meter, shape: responses.Shape, body: Body
    ) -> Answer:
        outcome: Outcome = "failed"
        try:
            async for _ in run.events():
                pass
            outcome = "completed"
        except Exception:  # the engine failed: billed for what it produced, if anything
            outcome = "failed"
            raise
        except BaseException:
            outcome = "cancelled" if run.produced_output() else "failed"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await run.close()
                await meter.emit(run, outcome)
        usage = meter.usage_dict(run)
        answer = responses.full_answer(shape, run, usage)
        if body.perf_metrics_in_response:
            answer["perf_metrics"] = run.perf_metrics()
        return Answer(answer, meter.headers(run))

    async def _stream(
        self, run: GenerationRun, meter: _Meter, shape: responses.Shape, body: Body
    ) -> StreamingAnswer:
        events = run.events()
        # Wait for the engine's first event, so that an error before any output
        # is a proper HTTP error, and prompt counts can go in the headers.
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await run.close()
                await meter.emit(run, "failed")
            raise
        headers = meter.headers(run) if run.prompt_known else meter.ticket_headers()

        chunks = _chunks(run, meter, shape, body, events, first)
        return StreamingAnswer(headers, chunks, functools.partial(meter.close, run))


async def _chunks(
    run: GenerationRun,
    meter: _Meter,
    shape: responses.Shape,
    body: Body,
    events: AsyncIterator[GenerationEvent],
    first: GenerationEvent | None,
) -> AsyncIterator[dict[str, Any]]:
    """The SSE chunks of a stream; emits its usage record however it ends.

    The engine's events become chunks here, ``first`` (already read)
    included, in this one generator: an inner generator would add a hop to
    every chunk on the hot path.
    """
    progress = meter.progress
    outcome: Outcome = "stopped"
    try:
        pending = [first] if first is not None else []
        sent_role: set[int] = set()
        while True:
            if pending:
                event = pending.pop()
            else:
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
            if isinstance(event, TextDelta):
                yield responses.delta_chunk(shape, event, event.index not in sent_role)
                sent_role.add(event.index)
                # Taken by the response: counted as delivered (the journal reads
                # it). An upstream chunk whose count is unknown is one token.
                progress.completion_tokens += event.token_count or int(
                    bool(event.text or event.tool_calls)
                )
            elif isinstance(event, ChoiceFinished):
                yield responses.finish_chunk(shape, event)
        if body.include_usage() or body.perf_metrics_in_response:
            yield responses.usage_chunk(
                shape,
                meter.usage_dict(run),
                run.perf_metrics() if body.perf_metrics_in_response else None,
            )
        outcome = "completed"
    except GeneratorExit:
        outcome = "cancelled"
        raise
    except Exception as exc:
        # The engine failed mid-answer (the headers are sent): end the stream
        # with an error event, not a cut, and bill what was produced.
        outcome = "failed"
        if not isinstance(exc, FireboxError):
            log.exception("request %s failed mid-stream", shape.request_id)
        yield responses.error_chunk(exc)
    except BaseException:
        outcome = "cancelled" if run.produced_output() else "failed"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await run.close()
            await meter.emit(run, outcome)


def _capped(requests: list[GenerationRequest], cap: int | None) -> list[GenerationRequest]:
    """``requests`` with ``max_tokens`` lowered to ``cap``: what the admitted room pays for.

    The engine then ends each choice there with ``finish_reason: "length"``.
    """
    if cap is None:
        return requests
    return [
        replace(request, params=replace(request.params, max_tokens=cap))
        if request.params.max_tokens is None or request.params.max_tokens > cap
        else request
        for request in requests
    ]


class _Meter:
    """Builds the usage of one request and emits its single usage record."""

    def __init__(
        self,
        sink: UsageSink,
        clock: Clock,
        principal: Principal,
        model: ModelRef,
        kind: MeteredKind,
        request_id: str,
        images: int,
        ticket: Ticket,
    ) -> None:
        self._sink = sink
        self._ticket = ticket
        self._clock = clock
        self._principal = principal
        self._model = model
        self._kind = kind
        self._request_id = request_id
        self._images = images
        self._emitted = False
        self._admitted_at = clock.now()
        self.progress = Progress(request_id)  # what the stream delivered (the journal's)
        self.journal: UsageJournal = NoJournal()
        self.traffic: InteractiveTraffic | None = None  # counted as interactive until emitted

    def prompt_tokens(self, run: GenerationRun) -> int:
        return run.prompt_tokens + IMAGE_PROMPT_TOKENS * self._images

    def usage_dict(self, run: GenerationRun) -> dict[str, Any]:
        prompt = self.prompt_tokens(run)
        completion = run.billable_completion_tokens()
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": run.cached_tokens},
        }

    def ticket_headers(self) -> dict[str, str]:
        return dict(self._ticket.headers)

    def headers(self, run: GenerationRun) -> dict[str, str]:
        return {
            **self._ticket.headers,
            "fireworks-prompt-tokens": str(self.prompt_tokens(run)),
            "fireworks-cached-prompt-tokens": str(run.cached_tokens),
        }

    async def close(self, run: GenerationRun) -> None:
        """End ``run`` and meter it as cancelled, unless it was metered already."""
        with anyio.CancelScope(shield=True):
            await run.close()
            await self.emit(run, "cancelled")

    async def emit(self, run: GenerationRun, outcome: Outcome) -> None:
        """Send the one usage record of this request and settle its admission ticket.

        The record goes to the sink first (the ledger's write-ahead spool), then
        the reservation is settled to it; later calls do nothing.
        """
        if self._emitted:
            return
        self._emitted = True
        if self.traffic is not None:
            self.traffic.leave()
        if outcome == "failed" and not run.produced_output():
            self.journal.close(self.progress)
            await self._ticket.settle(None)  # nothing was produced: nothing to bill
            return
        record = self.record(run, outcome)
        try:
            self._sink.record(record)
        except Exception:  # metering must never break an answer; the sink logs its own
            log.exception("usage record %s could not be queued", self._request_id)
        self.journal.close(self.progress)  # the record (spooled) supersedes the journal entry
        await self._ticket.settle_soon(record)  # the record is queued: may settle after

    def opened(self) -> Opened:
        """The journal's entry: the record at admission (counts zero) and the ticket's hold.

        Called on the journal's thread: reads only what never changes.
        """
        return self.record(None, "interrupted"), self._ticket.hold

    def record(self, run: GenerationRun | None, outcome: Outcome) -> UsageRecord:
        """The usage record of this request after ``run`` (counts zero, at admission, before)."""
        perf = run.perf_metrics() if run is not None else None
        return UsageRecord(
            request_id=self._request_id,
            account_id=self._principal.account_id,
            model=self._model.name,
            base_model=self._model.billing_model,
            kind=self._kind,
            time=self._clock.now() if run is not None else self._admitted_at,
            prompt_tokens=run.prompt_tokens if run is not None else 0,
            completion_tokens=run.billable_completion_tokens() if run is not None else 0,
            cached_prompt_tokens=run.cached_tokens if run is not None else 0,
            images=self._images,
            adapter=self._model.adapter,
            deployment=self._model.deployment,
            outcome=outcome,
            time_to_first_token_ms=(
                perf["time_to_first_token_ms"] if perf and run and run.first_token_at else None
            ),
            duration_ms=float(perf["total_time_ms"]) if perf else 0.0,
            price_class=self._model.price_class,
            explicit_price_micros=self._model.explicit_price_micros,
        )
