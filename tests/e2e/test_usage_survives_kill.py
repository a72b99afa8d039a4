"""A gateway SIGKILLed mid-traffic loses no usage: the next start replays its spool.

100 concurrent streaming chat requests go through a real ``firebox serve``
(in front of the fake upstream, with token delays so streams overlap): 60
short ones, whose ends spread over about a second, and 40 long ones that the
fake holds after their first tokens, so they are in flight at the kill
whatever the machine's speed. Once 40 short streams have finished and every
long one has produced a token, the server is SIGKILLed. A new server on the
same data dir and database replays the dead one's spool segments. Every stream
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
from tests.e2e.conftest import E2E_BACKENDS, KillTarget, upstream_kill_target
from tests.support.fake_upstream import FakeUpstream
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

MODEL = "accounts/firebox/models/llama-8b"
SHORT = 60
HELD = 40
REQUESTS = SHORT + HELD
KILL_AFTER = 40  # short streams done before the kill
HOLD_AFTER_TOKENS = 64  # the fake's hold: short streams (5..64 tokens) never reach it


@dataclass
class Seen:
    """What the client saw of one stream."""

    request_id: str
    held: bool
    started: bool = False  # a content chunk arrived
    done: bool = False
    prompt_tokens: int = -1
    completion_tokens: int = -1


Target = KillTarget


@pytest.fixture(params=E2E_BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with FakeUpstream(token_delay=0.02) as upstream:
        upstream.hold_after_tokens = HOLD_AFTER_TOKENS
        with upstream_kill_target(request.param, tmp_path, upstream.url, upstream.model, {}) as t:
            yield t


def demo_key(data_dir: Path) -> str:
    return str(json.loads((data_dir / "credentials.json").read_text())["demoKey"])


class Progress:
    """What the streams have reached, and a condition to wait on it (no polling, no clock)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.errors: list[BaseException] = []
        self.changed = asyncio.Condition()
        self.killed = False

    async def note(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def ready_to_kill(self) -> bool:
        short_done = sum(s.done for s in self.seen if not s.held)
        held_started = sum(s.started for s in self.seen if s.held)
        return bool(self.errors) or (short_done >= KILL_AFTER and held_started == HELD)


async def one_stream(client: openai.AsyncOpenAI, i: int, progress: Progress) -> None:
    held = i >= SHORT
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"request {i}: " + "word " * (i % 7)}],
            # short: 5..64 tokens at 20 ms, ends spread over ~1.3 s; held: stalls at 64
            max_tokens=1000 if held else 5 + (i * 37) % 60,
            stream=True,
            stream_options={"include_usage": True},
        )
        mine = Seen(raw.headers["x-request-id"], held)
        progress.seen.append(mine)
        stream = raw.parse()
        async for chunk in stream:
            if chunk.usage is not None:
                mine.prompt_tokens = chunk.usage.prompt_tokens
                mine.completion_tokens = chunk.usage.completion_tokens
            elif chunk.choices and chunk.choices[0].delta.content and not mine.started:
                mine.started = True
                await progress.note()
        mine.done = True  # the SDK's stream only ends normally on ``data: [DONE]``
        await progress.note()
    except Exception as error:
        if not progress.killed:  # before the kill, every stream should be going well
            progress.errors.append(error)
            await progress.note()
        raise


async def fire_and_kill(server: RunningServer, key: str) -> list[Seen]:
    """Start the streams; SIGKILL the server at a defined point of their progress."""
    progress = Progress()
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/inference/v1", api_key=key, max_retries=0, timeout=120
    ) as client:
        tasks = [asyncio.create_task(one_stream(client, i, progress)) for i in range(REQUESTS)]
        async with progress.changed:
            # 300 s is only the failure path: the condition is an event, not a race.
            await asyncio.wait_for(progress.changed.wait_for(progress.ready_to_kill), 300)
        assert not progress.errors, f"a stream failed before the kill: {progress.errors[0]!r}"
        progress.killed = True
        os.kill(server.process.pid, signal.SIGKILL)
        await asyncio.gather(*tasks, return_exceptions=True)
    server.process.wait(60)
    return progress.seen


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
    assert len(seen) == REQUESTS
    assert len(done) >= KILL_AFTER, f"{len(done)} streams completed"
    assert not any(s.done for s in seen if s.held), "a held stream ended before the kill"
    assert all(s.completion_tokens > 0 and s.prompt_tokens > 0 for s in done)
    assert len({s.request_id for s in seen}) == len(seen)

    second = start_server(target.data_dir, env=target.env)
    try:
        expected = {s.request_id: (s.prompt_tokens, s.completion_tokens) for s in done}
        deadline = time.monotonic() + 120  # only the failure path
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
