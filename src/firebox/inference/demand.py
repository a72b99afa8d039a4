"""The worst case of a request, before it runs: what admission reserves against.

A token is at least one byte of UTF-8 text, so a prompt's byte length bounds
its token count; chat templates add a few tokens per message, allowed for
with ``TEMPLATE_TOKENS_PER_MESSAGE``. Completion tokens are bounded by
``max_tokens`` or, when absent, by the model's default completion bound
(``FIREBOX_DEFAULT_MAX_COMPLETION_TOKENS``, 2,048), never past the context
length; with ``n`` choices each can use that much. Serving passes the same
``completion_bound`` to the engine, so a request without ``max_tokens``
cannot generate past what it was charged for (OpenAI and vLLM default to the
rest of the context instead; reserving that made every request hold ~20x
its real cost). Overestimating
only holds back budget until the request settles; underestimating could let
the month's usage pass the spend limit, so every bound errs high. Where the
gateway tokenized the prompt ahead (an in-process engine), the caller passes
its exact count as ``prompt_tokens`` and no bound is needed.
"""

from __future__ import annotations

import orjson

from firebox.inference.admission import Demand, DemandKind
from firebox.inference.models import ModelRef
from firebox.inference.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingCreate

TEMPLATE_TOKENS_PER_MESSAGE = 16


def _context(model: ModelRef) -> int | None:
    return model.context_length or None


def _cap(tokens: int, context: int | None) -> int:
    return tokens if context is None else min(tokens, context)


def _prompt_bound(text_or_ids: str | list[int], context: int | None) -> int:
    if isinstance(text_or_ids, str):
        bound = len(text_or_ids.encode()) + TEMPLATE_TOKENS_PER_MESSAGE
    else:
        bound = len(text_or_ids)
    return _cap(bound, context)


def _demand(
    model: ModelRef,
    request_id: str,
    account_id: str,
    kind: DemandKind,
    prompt_tokens: int,
    completion_tokens: int,
    images: int = 0,
    choices: int = 0,
) -> Demand:
    return Demand(
        request_id=request_id,
        account_id=account_id,
        kind=kind,
        model=model.name,
        billing_model=model.billing_model,
        price_class=model.price_class,
        explicit_price_micros=model.explicit_price_micros,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        images=images,
        deployment=model.deployment,
        choices=choices,
    )


def completion_bound(body: ChatCompletionRequest | CompletionRequest, model: ModelRef) -> int:
    """The most tokens one choice may generate: what demand reserves and the engine is told.

    ``max_tokens`` when sent, else the model's default bound; never past the
    context length (a model whose context is unknown is bounded by its default).
    """
    limit = body.token_limit()
    return _cap(model.max_completion_tokens if limit is None else limit, _context(model))


def generation_demand(
    body: ChatCompletionRequest | CompletionRequest,
    model: ModelRef,
    account_id: str,
    request_id: str,
    images: int,
    prompt_tokens: int | None = None,
    chat_bytes: int | None = None,
) -> Demand:
    """The most a chat or completions request can bill (``prompt_tokens``: the exact count).

    ``chat_bytes``: the chat messages' size as ``prompt_size.prompt_bytes``
    measured it (their JSON), so that they are not encoded again.
    """
    context = _context(model)
    per_choice = completion_bound(body, model)
    if isinstance(body, ChatCompletionRequest):
        if prompt_tokens is None:
            size = chat_bytes
            if size is None:
                size = len(orjson.dumps([m.model_dump(exclude_none=True) for m in body.messages]))
            prompt_tokens = _cap(size + TEMPLATE_TOKENS_PER_MESSAGE * len(body.messages), context)
        return _demand(
            model,
            request_id,
            account_id,
            "chat",
            prompt_tokens,
            body.n * per_choice,
            images,
            body.n,
        )
    prompts = body.prompts()
    if prompt_tokens is None:
        prompt_tokens = sum(_prompt_bound(p, context) for p in prompts)
    choices = len(prompts) * body.n
    completion = choices * per_choice
    return _demand(
        model, request_id, account_id, "completion", prompt_tokens, completion, 0, choices
    )


def embedding_demand(
    body: EmbeddingCreate,
    model: ModelRef,
    account_id: str,
    request_id: str,
    prompt_tokens: int | None = None,
) -> Demand:
    """The most an embeddings request can bill (its inputs, each bounded by the context)."""
    context = _context(model)
    prompt = prompt_tokens
    if prompt is None:
        prompt = sum(_prompt_bound(i, context) for i in body.inputs())
    return _demand(model, request_id, account_id, "embedding", prompt, 0)
