"""Big prompts: refused from their length when they cannot fit, tokenized off the event loop.

Issue 13, finding 2: an ~8 MB prompt was tokenized on the event loop before
the context check, stalling every other request. Here: the per-tokenizer
byte rule, the tokenizer pool's per-account share, and serving's use of both
(exact prompt counts reserved before admission, ids handed to the engine).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.clock import FakeClock
from firebox.errors import RateLimited
from firebox.inference.admission import Demand, OpenTicket, Ticket
from firebox.inference.engine import (
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
    TokenizedPrompt,
    UsageReport,
)
from firebox.inference.local.text_engine import LocalTextEngine
from firebox.inference.local.token_bytes import max_bytes_per_token
from firebox.inference.tokenizer_pool import TokenizerPool
from firebox.settings import Settings
from tests.inference.conftest import register_upstream_models
from tests.support.api import bearer, create_account, member_key
from tests.support.fake_upstream import FakeUpstream

BASE = "accounts/firebox/models/llama-8b"
TINY = Path(__file__).resolve().parents[2] / "models" / "firebox-tiny"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the byte rule ---------------------------------------------------------------------------


def test_the_demo_tokenizer_never_packs_more_bytes_into_a_token_than_its_bound() -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(TINY), local_files_only=True)
    bound = max_bytes_per_token(tokenizer)
    assert bound is not None
    rng = random.Random(7)
    words = ["the", " ", "\n", "                ", "<|im_start|>", "é", "日本", "\t", "ab" * 40]
    for _ in range(50):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 200)))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) * bound >= len(text.encode())


def _fast(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def _byte_level_bpe() -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["ĠĠĠĠ"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tokenizer


def test_normalizers_widen_the_bound_and_text_dropping_steps_remove_it() -> None:
    plain = _byte_level_bpe()
    assert max_bytes_per_token(_fast(plain)) == len("ĠĠĠĠ".encode())
    nfkc = _byte_level_bpe()
    nfkc.normalizer = normalizers.NFKC()  # U+1D400 (4 bytes) becomes "A"
    assert max_bytes_per_token(_fast(nfkc)) == 4 * len("ĠĠĠĠ".encode())
    dropping = _byte_level_bpe()
    dropping.normalizer = normalizers.Strip()  # any run of spaces vanishes
    assert max_bytes_per_token(_fast(dropping)) is None
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()  # drops whitespace; [UNK] is any word
    assert max_bytes_per_token(_fast(words)) is None


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalTextEngine]:
    engine = LocalTextEngine.load(TINY, device="cpu", kv_cache_tokens=4096, num_threads=1)
    yield engine
    engine.shutdown()


def _request(prompt: str | list[int] | None = None, **fields: Any) -> GenerationRequest:
    kind = "completion" if prompt is not None else "chat"
    fields.setdefault("params", SamplingParams(max_tokens=1))
    return GenerationRequest(
        request_id="r", model="firebox-tiny", kind=kind, prompt=prompt, **fields
    )


@pytest.mark.anyio
async def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(
    engine: LocalTextEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = engine.bytes_per_token
    assert bound is not None
    context = 2048
    huge = "x" * (bound * context + 1)

    def no_tokenizing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the tokenizer ran on a prompt that cannot fit")

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", no_tokenizing)
    with pytest.raises(PromptTooLong) as refused:  # the engine's own path (generate)
        async for _ in engine.generate(_request(huge, context_length=context)):
            pass
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "prompt"
    chat = _request(messages=[{"role": "user", "content": huge}], context_length=context)
    with pytest.raises(PromptTooLong) as refused_chat:  # the gateway's path (ahead)
        engine.tokenize_prompt(chat)
    assert refused_chat.value.param == "messages"


@pytest.mark.anyio
async def test_ids_tokenized_ahead_are_run_as_given(engine: LocalTextEngine) -> None:
    request = _request("Once upon a time", params=SamplingParams(max_tokens=2, temperature=0))
    ahead = engine.tokenize_prompt(request)
    assert ahead.ids == AutoTokenizer.from_pretrained(str(TINY))("Once upon a time")["input_ids"]
    # Different ids than the prompt's text would give: the engine must run these.
    given = GenerationRequest(
        request_id="r2",
        model="firebox-tiny",
        kind="completion",
        params=SamplingParams(max_tokens=2, temperature=0),
        prompt="Once upon a time",
        tokenized=TokenizedPrompt(ahead.ids[:2]),
    )
    usage = [e async for e in engine.generate(given) if isinstance(e, UsageReport)]
    assert usage[-1].prompt_tokens == 2


# -- the tokenizer pool --------------------------------------------------------------------


class _Gate:
    """A blocking job that waits until released, and tells when it started."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.thread: int | None = None

    def __call__(self) -> str:
        self.thread = threading.get_ident()
        self.started.set()
        assert self.release.wait(60), "the test never released this job"
        return "done"


async def _until(event: threading.Event) -> None:
    while not await asyncio.to_thread(event.wait, 0.05):
        pass


@pytest.mark.anyio
async def test_one_account_cannot_take_the_whole_pool() -> None:
    pool = TokenizerPool(threads=2, account_share=1, account_queue=1, inline_bytes=0)
    try:
        first, second, other = _Gate(), _Gate(), _Gate()
        a1 = asyncio.create_task(pool.run("a", 10, first))
        await _until(first.started)
        a2 = asyncio.create_task(pool.run("a", 10, second))
        while pool.busy("a") < 2:
            await asyncio.sleep(0)
        with pytest.raises(RateLimited) as refused:  # a's queue (1) is full
            await pool.run("a", 10, _Gate())
        assert refused.value.code == "tokenizer_busy"
        assert "Retry-After" in refused.value.headers
        other.release.set()
        assert await pool.run("b", 10, other) == "done"  # b runs while a holds its share
        assert other.thread != threading.get_ident()  # on a worker, not the event loop
        assert not second.started.is_set()  # a's second job still waits for a's slot
        first.release.set()
        second.release.set()
        assert await a1 == "done" and await a2 == "done"
        assert pool.busy("a") == 0
    finally:
        pool.close()


@pytest.mark.anyio
async def test_a_caller_that_gives_up_keeps_its_slot_until_the_thread_is_done() -> None:
    pool = TokenizerPool(threads=2, account_share=1, account_queue=4, inline_bytes=0)
    try:
        running, queued = _Gate(), _Gate()
        task = asyncio.create_task(pool.run("a", 10, running))
        await _until(running.started)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        waiting = asyncio.create_task(pool.run("a", 10, queued))
        while pool.busy("a") < 2:
            await asyncio.sleep(0)
        assert not queued.started.is_set()  # the abandoned job still runs: no slot for a
        running.release.set()
        queued.release.set()
        assert await waiting == "done"
    finally:
        pool.close()


@pytest.mark.anyio
async def test_small_jobs_run_in_place() -> None:
    pool = TokenizerPool(threads=1, account_share=1, inline_bytes=100)
    try:
        assert await pool.run("a", 100, threading.get_ident) == threading.get_ident()
    finally:
        pool.close()


# -- serving: tokenized off the loop, before admission, counted exactly -----------------------


class _AheadEngine:
    """A text engine that tokenizes ahead (one token per character) and records where."""

    capabilities = EngineCapabilities(params=frozenset({"max_tokens"}))

    def __init__(self) -> None:
        self.tokenized_on: list[int] = []
        self.received: list[GenerationRequest] = []

    def tokenize_prompt(self, request: GenerationRequest) -> TokenizedPrompt:
        self.tokenized_on.append(threading.get_ident())
        assert request.messages is not None
        return TokenizedPrompt([1] * len(str(request.messages[-1]["content"])))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.received.append(request)
        assert request.tokenized is not None
        yield UsageReport(prompt_tokens=len(request.tokenized.ids), completion_tokens=0)

    async def close(self) -> None:
        return None


class _Admission:
    def __init__(self) -> None:
        self.demands: list[Demand] = []

    async def admit(self, principal: Principal, demand: Demand) -> Ticket:
        self.demands.append(demand)
        return OpenTicket()


@pytest.mark.anyio
async def test_serving_tokenizes_off_the_loop_and_reserves_the_exact_count() -> None:
    from firebox.catalog.binding import LocalEngine
    from firebox.catalog.kinds import ModelKind
    from firebox.inference.models import ModelRef
    from firebox.inference.protocol import ChatCompletionRequest
    from firebox.inference.serving import InferenceService

    engine = _AheadEngine()
    ref = ModelRef(
        name="accounts/firebox/models/m",
        kind=ModelKind.TEXT_BASE,
        binding=LocalEngine(path="m"),
        engine_model="m",
        adapter=None,
        billing_model="accounts/firebox/models/m",
        context_length=100_000,
        vision=False,
    )

    class Models:
        def resolve_text(self, account_id: str, name: str) -> ModelRef:
            return ref

    class Router:
        async def text_engine(self, model: ModelRef) -> _AheadEngine:
            return engine

    class Sink:
        def record(self, record: Any) -> None:
            return None

    admission = _Admission()
    pool = TokenizerPool(threads=1, account_share=1, inline_bytes=1000)
    service = InferenceService(
        Models(),  # type: ignore[arg-type]
        Router(),  # type: ignore[arg-type]
        Sink(),
        clock=FakeClock(),
        admission=admission,
        tokenizers=pool,
    )
    principal = Principal("acme", "owner", 1, Role.ADMIN, "key", "hash")
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "y" * 5000}], "max_tokens": 1}
    )
    try:
        await service.generate(principal, body, "req-1")
    finally:
        pool.close()
    assert engine.tokenized_on and engine.tokenized_on[0] != threading.get_ident()
    assert admission.demands[0].prompt_tokens == 5000  # exact, not a byte bound plus allowance
    assert engine.received[0].tokenized is not None


# -- the operator's prompt cap, through the routes --------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_prompt_bytes": 2048})


def test_prompts_over_the_operator_cap_are_a_400_before_any_work(
    client: TestClient, operator_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    register_upstream_models(client, operator_headers, upstream)
    create_account(client, operator_headers, "acme")
    key = bearer(member_key(client, operator_headers, "acme", "dev", "user"))
    big = "z" * 3000
    cases = [
        ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": big}]}),
        ("/v1/completions", {"model": BASE, "prompt": ["hi", big]}),
        ("/v1/embeddings", {"model": "accounts/firebox/models/all-minilm-l6-v2", "input": big}),
    ]
    for path, body in cases:
        response = client.post(path, json=body, headers=key)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (
            error["code"] == "prompt_too_large" and "FIREBOX_MAX_PROMPT_BYTES" in error["message"]
        )
    assert upstream.requests == []  # nothing reached the engine
    small = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=small, headers=key).status_code == 200
