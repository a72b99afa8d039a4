"""Streams cut by a SIGKILL are billed for what they delivered, once, after the restart.

32 long streaming chats run through a real ``firebox serve`` (in front of the
fake upstream, one token per chunk every 50 ms, ``max_tokens`` far beyond
what the test waits for). Once every stream has received ``MIN_TOKENS``
tokens and the in-flight journal (``<spool dir>/*.journal``) has recorded
that many for each, the server is SIGKILLed. A new server on the same data
dir settles the dead one's journal. Then, per request id: exactly one usage
row (outcome ``interrupted``), billing at least what the client received
minus one second of that stream's own rate (the journal's bound; the test
runs the journal at half a second so a loaded machine's scheduling delay
stays inside it) and at most what it received plus a token or two still
in flight. With Redis, the dead process's spend reservations are closed:
the account's month holds nothing reserved afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from sqlalchemy import create_engine, text

from firebox.store.database import normalize_url
from tests.conftest import REDIS_URL
from tests.e2e.conftest import E2E_BACKENDS, KillTarget, upstream_kill_target
from tests.e2e.enforcement_support import Member, new_member
from tests.support.fake_upstream import FakeUpstream
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

MODEL = "accounts/firebox/models/llama-8b"
STREAMS = 32
MIN_TOKENS = 20  # each stream has delivered (and the journal recorded) this many
JOURNAL_INTERVAL_S = 0.5
SLACK = 2  # tokens the server counted as sent that the kill kept from the client


@dataclass
class Stream:
    """What the client saw of one stream."""

    request_id: str = ""
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each token
    enough: asyncio.Event = field(default_factory=asyncio.Event)


Target = KillTarget


@pytest.fixture(params=E2E_BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    env = {"FIREBOX_INFLIGHT_JOURNAL_INTERVAL_S": str(JOURNAL_INTERVAL_S)}
    if REDIS_URL:
        env["FIREBOX_REDIS_URL"] = REDIS_URL
    with (
        FakeUpstream(token_delay=0.05) as upstream,
        upstream_kill_target(request.param, tmp_path, upstream.url, upstream.model, env) as t,
    ):
        yield t


def paying_member(url: str) -> Member:
    """A fresh account (its own Redis keys) with a card on file, so it may spend."""
    member = new_member(url, f"inflight-{uuid.uuid4().hex[:8]}")
    httpx.post(
        f"{url}/v1/accounts/{member.account}/paymentMethods",
        headers=member.headers,
        json={"paymentMethod": "pm_card_visa"},
        timeout=30,
    ).raise_for_status()
    return member


async def one_stream(client: openai.AsyncOpenAI, i: int, mine: Stream) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"stream {i}: " + "word " * (i % 5)}],
        max_tokens=4000,  # 200 s at 50 ms a token: every stream is cut by the kill
        stream=True,
    )
    mine.request_id = raw.headers["x-request-id"]
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            mine.arrivals.append(time.monotonic())
            if len(mine.arrivals) >= MIN_TOKENS:
                mine.enough.set()


def journaled(spool_dir: Path) -> dict[str, int]:
    """request id -> delivered completion tokens, as the journal files say now."""
    counts: dict[str, int] = {}
    for path in spool_dir.glob("*.journal"):
        for line in path.read_bytes().splitlines():
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line being written right now
            if data["e"] == "o":
                rid = data["u"]["request_id"]
                counts[rid] = max(counts.get(rid, 0), data["n"][2] if "n" in data else 0)
            elif data["e"] == "p":
                counts[data["id"]] = max(counts.get(data["id"], 0), data["n"][2])
    return counts


async def stream_and_kill(server: RunningServer, key: str, spool_dir: Path) -> list[Stream]:
    streams = [Stream() for _ in range(STREAMS)]
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/inference/v1", api_key=key, max_retries=0, timeout=120
    ) as client:
        tasks = [asyncio.create_task(one_stream(client, i, s)) for i, s in enumerate(streams)]
        await asyncio.wait_for(asyncio.gather(*(s.enough.wait() for s in streams)), 120)
        deadline = time.monotonic() + 60
        while True:
            counts = journaled(spool_dir)
            if all(counts.get(s.request_id, 0) >= MIN_TOKENS for s in streams):
                break
            assert time.monotonic() < deadline, "the journal never recorded the streams"
            await asyncio.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    server.process.wait(10)
    assert all(isinstance(r, Exception) for r in results), "a stream ended before the kill"
    return streams


def usage_rows(database_url: str) -> list[tuple[str, int, int, str]]:
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT request_id, prompt_tokens, completion_tokens, outcome "
                    "FROM usage_records"
                )
            ).all()
    finally:
        engine.dispose()
    return [(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in found]


def one_second_of(stream: Stream) -> int:
    """Tokens this stream delivered in a second, at its own average rate."""
    elapsed = stream.arrivals[-1] - stream.arrivals[0]
    rate = (len(stream.arrivals) - 1) / elapsed if elapsed > 0 else len(stream.arrivals)
    return math.ceil(rate)


def reserved(account: str) -> tuple[int, list[bytes]]:
    """The account's reserved micros this month in Redis, and its open reservation fields."""
    import redis

    assert REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    try:
        period = datetime.now(UTC).strftime("%Y-%m")
        fields = client.hgetall(f"firebox:spend:{{{account}:{period}}}")
    finally:
        client.close()
    holds = [k for k in fields if k.startswith(b"r:")]
    return int(fields.get(b"reserved", 0)), holds


def test_streams_cut_by_a_sigkill_are_billed_what_they_delivered(target: Target) -> None:
    spool_dir = target.data_dir / "spool"
    first = start_server(target.data_dir, env=target.env)
    try:
        member = paying_member(first.url)
        streams = asyncio.run(stream_and_kill(first, member.key, spool_dir))
    finally:
        first.stop()
    assert len({s.request_id for s in streams}) == STREAMS
    if REDIS_URL:
        held, holds = reserved(member.account)
        assert held > 0 and len(holds) == STREAMS  # the dead process's reservations

    second = start_server(target.data_dir, env=target.env)
    try:
        # start_server returns once /healthz answers: the journal was replayed before that.
        rows = usage_rows(target.database_url)
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids)), "a request was billed twice"
        billed = {r[0]: r for r in rows}
        for stream in streams:
            assert stream.request_id in billed, f"{stream.request_id} was never billed"
            _, _, completion, outcome = billed[stream.request_id]
            delivered = len(stream.arrivals)
            assert outcome == "interrupted"
            assert delivered - one_second_of(stream) <= completion <= delivered + SLACK, (
                stream.request_id,
                delivered,
                completion,
            )
        assert set(billed) == {s.request_id for s in streams}
        if REDIS_URL:
            deadline = time.monotonic() + 30
            while reserved(member.account) != (0, []) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert reserved(member.account) == (0, [])
    finally:
        second.stop()
    assert sorted(spool_dir.glob("*.journal")) == []
