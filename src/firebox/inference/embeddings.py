"""Embeddings: validate, embed, answer in the OpenAI shape, meter."""

from __future__ import annotations

import base64
import functools
import struct
import time
from typing import Any

import anyio

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.inference.admission import Admission, OpenAdmission
from firebox.inference.demand import embedding_demand
from firebox.inference.engine import EmbeddingRequest, InputTokenizer
from firebox.inference.metering import UsageRecord, UsageSink
from firebox.inference.models import ModelResolver
from firebox.inference.prompt_size import check_prompt_bytes, prompt_bytes
from firebox.inference.protocol import EmbeddingCreate
from firebox.inference.router import EngineRouter
from firebox.inference.tokenizer_pool import TokenizerPool


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32, base64 — what the OpenAI client decodes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class EmbeddingService:
    """Serves ``/embeddings`` for embedding models in the catalog."""

    def __init__(
        self,
        models: ModelResolver,
        router: EngineRouter,
        usage: UsageSink,
        clock: Clock,
        admission: Admission | None = None,
        tokenizers: TokenizerPool | None = None,
        max_prompt_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._models = models
        self._router = router
        self._usage = usage
        self._clock = clock
        self._admission = admission or OpenAdmission()
        self._tokenizers = tokenizers or TokenizerPool()
        self._max_prompt_bytes = max_prompt_bytes

    async def embed(
        self, principal: Principal, body: EmbeddingCreate, request_id: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        principal.require(principal.account_id, Permission.INFERENCE)
        model = self._models.resolve_embedding(principal.account_id, body.model)
        inputs = body.inputs()
        size = prompt_bytes(body)
        check_prompt_bytes(size, self._max_prompt_bytes, "input")
        engine = await self._router.embedding_engine(model)
        token_ids: list[list[int]] | None = None
        if isinstance(engine, InputTokenizer):
            # Off the event loop, before admission: the demand holds the exact count.
            token_ids = await self._tokenizers.run(
                principal.account_id, size, functools.partial(engine.tokenize_inputs, inputs)
            )
        prompt_tokens = None if token_ids is None else sum(len(ids) for ids in token_ids)
        ticket = await self._admission.admit(
            principal,
            embedding_demand(body, model, principal.account_id, request_id, prompt_tokens),
        )
        record: UsageRecord | None = None
        try:
            started = time.perf_counter()
            result = await engine.embed(
                EmbeddingRequest(
                    request_id=request_id,
                    model=model.engine_model,
                    inputs=inputs,
                    dimensions=body.dimensions,
                    token_ids=token_ids,
                )
            )
            record = UsageRecord(
                request_id=request_id,
                account_id=principal.account_id,
                model=model.name,
                base_model=model.billing_model,
                kind="embedding",
                time=self._clock.now(),
                prompt_tokens=result.prompt_tokens,
                completion_tokens=0,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                price_class=model.price_class,
                explicit_price_micros=model.explicit_price_micros,
            )
            self._usage.record(record)
        finally:
            with anyio.CancelScope(shield=True):
                if record is not None:
                    await ticket.settle_soon(record)  # queued: may settle after the answer
                else:
                    await ticket.settle(None)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_base64(v) if body.encoding_format == "base64" else v,
            }
            for i, v in enumerate(result.vectors)
        ]
        answer = {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
        headers = {
            **ticket.headers,
            "fireworks-prompt-tokens": str(result.prompt_tokens),
            "fireworks-cached-prompt-tokens": "0",
        }
        return answer, headers
