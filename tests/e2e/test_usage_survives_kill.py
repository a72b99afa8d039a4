"""A gateway SIGKILLed mid-traffic loses no usage: the next start replays its spool.

100 concurrent streaming chat requests go through a real ``firebox serve``
(in front of the fake upstream, with token delays so streams overlap); once
about 40 have finished, the server is SIGKILLed. A new server on the same
data dir and database replays the dead one's spool segments. Every stream
the client saw end with ``[DONE]`` must then have exactly one usage record,
with the token counts of its usage chunk; no request id may appear twice.
(Streams cut by the kill may or may not be billed: their record is written
at their end, which never came, or during the cancellation.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from sqlalchemy import create_engine, text

from firebox.store.database import normalize_url
from tests.conftest import OPERATOR_KEY
from tests.e2e.conftest import E2E_BACKENDS, drop_schema, pg_schema_url
from tests.support.fake_upstream import FakeUpstream
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

MODEL = "accounts/firebox/models/llama-8b"
REQUESTS = 100
KILL_AFTER = 40


@dataclass
class Seen:
    """What the client saw of one stream."""

    request_id: str
    done: bool = False
    prompt_tokens: int = -1
    completion_tokens: int = -1


@dataclass
class Target:
    data_dir: Path
    env: dict[str, str]
    database_url: str


@pytest.fixture(params=E2E_BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    data_dir = tmp_path / "data"
    catalog = tmp_path / "catalog.toml"
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_CATALOG_FILE": str(catalog),
        "FIREBOX_ACCESS_LOG": "false",
    }
    with FakeUpstream(token_delay=0.02) as upstream:
        catalog.write_text(
            f"""\
[[models]]
id = "llama-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
contextLength = 8192
public = true
engine = {{ type = "upstream", urls = ["{upstream.url}"], upstreamModel = "{upstream.model}", \
timeoutS = 30 }}
"""
        )
        if request.param == "postgresql":
            schema, url = pg_schema_url()
            env["FIREBOX_DATABASE_URL"] = url
            try:
                yield Target(data_dir, env, url)
            finally:
                drop_schema(schema)
        else:
            yield Target(data_dir, env, f"sqlite:///{data_dir / 'firebox.db'}")


def demo_key(data_dir: Path) -> str:
    return str(json.loads((data_dir / "credentials.json").read_text())["demoKey"])


async def one_stream(client: openai.AsyncOpenAI, i: int, seen: list[Seen]) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"request {i}: " + "word " * (i % 7)}],
        max_tokens=5 + (i * 37) % 60,  # 5..64 tokens at 20 ms: ends spread over ~1.3 s
        stream=True,
        stream_options={"include_usage": True},
    )
    mine = Seen(raw.headers["x-request-id"])
    seen.append(mine)
    stream = raw.parse()
    async for chunk in stream:
        if chunk.usage is not None:
            mine.prompt_tokens = chunk.usage.prompt_tokens
            mine.completion_tokens = chunk.usage.completion_tokens
    mine.done = True  # the SDK's stream only ends normally on ``data: [DONE]``


async def fire_and_kill(server: RunningServer, key: str) -> list[Seen]:
    """Start 100 streams; SIGKILL the server once ``KILL_AFTER`` of them are done."""
    seen: list[Seen] = []
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/inference/v1", api_key=key, max_retries=0, timeout=60
    ) as client:
        tasks = [asyncio.create_task(one_stream(client, i, seen)) for i in range(REQUESTS)]
        deadline = time.monotonic() + 60
        while sum(s.done for s in seen) < KILL_AFTER:
            assert time.monotonic() < deadline, "the streams did not finish in time"
            await asyncio.sleep(0.005)
        os.kill(server.process.pid, signal.SIGKILL)
        await asyncio.gather(*tasks, return_exceptions=True)
    server.process.wait(10)
    return seen


def usage_rows(database_url: str) -> list[tuple[str, int, int]]:
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT request_id, prompt_tokens, completion_tokens FROM usage_records")
            ).all()
    finally:
        engine.dispose()
    return [(str(r[0]), int(r[1]), int(r[2])) for r in found]


def test_usage_of_completed_streams_survives_a_sigkill(target: Target) -> None:
    first = start_server(target.data_dir, env=target.env)
    try:
        seen = asyncio.run(fire_and_kill(first, demo_key(target.data_dir)))
    finally:
        first.stop()
    done = [s for s in seen if s.done]
    assert KILL_AFTER <= len(done) < REQUESTS, f"{len(done)} streams completed"
    assert all(s.completion_tokens > 0 and s.prompt_tokens > 0 for s in done)
    assert len({s.request_id for s in seen}) == len(seen)

    second = start_server(target.data_dir, env=target.env)
    try:
        expected = {s.request_id: (s.prompt_tokens, s.completion_tokens) for s in done}
        deadline = time.monotonic() + 60
        while True:
            rows = usage_rows(target.database_url)
            billed = {r[0]: (r[1], r[2]) for r in rows}
            if expected.keys() <= billed.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = sorted(expected.keys() - billed.keys())
        assert missing == [], f"{len(missing)} completed streams were not billed"
        assert {rid: billed[rid] for rid in expected} == expected
        request_ids = [r[0] for r in rows]
        assert len(request_ids) == len(set(request_ids))
        assert set(request_ids) <= {s.request_id for s in seen}  # nothing billed twice or made up
    finally:
        second.stop()
    # a clean shutdown commits everything and deletes its segments
    assert sorted((target.data_dir / "spool").glob("*.spool")) == []
