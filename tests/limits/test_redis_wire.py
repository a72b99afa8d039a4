"""The pipelined script connection: reply matching, retries, timeouts, NOSCRIPT, set-up.

Fault cases run against a small RESP server in the test (it can stall, drop
the connection or forget scripts on cue); the rest also against the real
Redis when ``FIREBOX_TEST_REDIS_URL`` is set. Each case runs on asyncio and
on uvloop (the server's loop, whose transports differ).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from firebox.limits.redis_wire import ScriptClient, pack
from tests.conftest import REDIS_URL

needs_redis = pytest.mark.skipif(REDIS_URL is None, reason="FIREBOX_TEST_REDIS_URL is not set")

Handler = Callable[[list[bytes], "FakeRedis"], Awaitable[bytes | None]]


class FakeRedis:
    """A RESP server answering each command with ``handler``'s bytes (None: say nothing)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FakeRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def drop_all(self) -> None:
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                self.commands.append(command)
                answer = await self.handler(command, self)
                if answer is not None:
                    writer.write(answer)


def run_on_both_loops(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())
    uvloop.run(main())


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


async def echo_last_arg(command: list[bytes], server: FakeRedis) -> bytes | None:
    if command[0] == b"EVALSHA":
        await asyncio.sleep(0.001 if command[-1].endswith(b"0") else 0)
        return bulk(command[-1])
    return b"+OK\r\n"


def test_pack_writes_resp_arrays_of_bulk_strings() -> None:
    assert pack("GET", b"k", 12) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack("SET", "é") == b"*2\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n"


def test_concurrent_calls_share_one_connection_and_get_their_own_replies() -> None:
    async def main() -> None:
        async with FakeRedis(echo_last_arg) as server:
            client = ScriptClient(server.url, timeout_s=60, connect_timeout_s=60)
            script = client.register_script("return ARGV[1]")
            replies = await asyncio.gather(*(script(keys=["k"], args=[i]) for i in range(200)))
            assert replies == [str(i).encode() for i in range(200)]
            assert (server.connections, client.connects) == (1, 1)
            sha = script.sha.encode()
            assert all(c[:4] == [b"EVALSHA", sha, b"1", b"k"] for c in server.commands)
            await client.aclose()

    run_on_both_loops(main)


def test_noscript_is_answered_by_sending_the_source() -> None:
    async def forgetful(command: list[bytes], server: FakeRedis) -> bytes:
        if command[0] == b"EVALSHA":
            return b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
        return b":7\r\n"

    async def main() -> None:
        async with FakeRedis(forgetful) as server:
            client = ScriptClient(server.url, timeout_s=60, connect_timeout_s=60)
            script = client.register_script("return 7")
            assert await script(keys=[], args=["a"]) == 7
            assert [c[0] for c in server.commands] == [b"EVALSHA", b"EVAL"]
            assert server.commands[1][1:] == [b"return 7", b"0", b"a"]
            await client.aclose()

    run_on_both_loops(main)


def test_an_error_reply_raises_without_breaking_the_connection() -> None:
    async def picky(command: list[bytes], server: FakeRedis) -> bytes:
        if command[-1] == b"bad":
            return b"-ERR user_script:1: boom\r\n"
        return b":1\r\n"

    async def main() -> None:
        async with FakeRedis(picky) as server:
            client = ScriptClient(server.url, timeout_s=60, connect_timeout_s=60)
            script = client.register_script("x")
            with pytest.raises(ResponseError, match="boom"):
                await script(args=["bad"])
            assert await script(args=["good"]) == 1
            assert client.connects == 1
            await client.aclose()

    run_on_both_loops(main)


def test_a_dropped_connection_is_retried_once_on_a_new_one() -> None:
    async def drop_first(command: list[bytes], server: FakeRedis) -> bytes | None:
        if server.connections == 1:
            server.drop_all()
            return None
        return b":1\r\n"

    async def main() -> None:
        async with FakeRedis(drop_first) as server:
            client = ScriptClient(server.url, timeout_s=60, connect_timeout_s=60)
            script = client.register_script("x")
            assert await asyncio.gather(script(), script()) == [1, 1]
            assert client.connects == 2
            await client.aclose()

    run_on_both_loops(main)


def test_a_silent_redis_times_out_every_call_in_flight_and_the_next_call_reconnects() -> None:
    async def main() -> None:
        silent = {"on": True}

        async def maybe(command: list[bytes], server: FakeRedis) -> bytes | None:
            return None if silent["on"] else b":5\r\n"

        async with FakeRedis(maybe) as server:
            client = ScriptClient(server.url, timeout_s=0.05, connect_timeout_s=1)
            script = client.register_script("x")
            results = await asyncio.gather(script(), script(), return_exceptions=True)
            assert all(isinstance(r, RedisTimeoutError) for r in results)
            silent["on"] = False
            # The reconnect is under test now, not the timeout: a loaded machine may take
            # longer than 50 ms to carry a reply across the loop.
            client._timeout = 60.0
            assert await script() == 5
            # The first try and its retry each opened a connection, then one more now.
            assert client.connects == 3
            await client.aclose()

    run_on_both_loops(main)


def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others() -> None:
    async def main() -> None:
        slow_arrived = asyncio.Event()  # one per loop: main runs on asyncio and on uvloop

        async def slow_first(command: list[bytes], server: FakeRedis) -> bytes:
            if command[-1] == b"slow":
                slow_arrived.set()
                await asyncio.sleep(0.05)
            return bulk(command[-1])

        async with FakeRedis(slow_first) as server:
            client = ScriptClient(server.url, timeout_s=60, connect_timeout_s=60)
            script = client.register_script("x")
            slow = asyncio.ensure_future(script(args=["slow"]))
            await asyncio.wait_for(slow_arrived.wait(), 60)  # on the wire before the fast one
            fast = asyncio.ensure_future(script(args=["fast"]))
            slow.cancel()
            assert await fast == b"fast"
            assert await script(args=["after"]) == b"after"
            assert client.connects == 1
            await client.aclose()

    run_on_both_loops(main)


def test_the_url_s_password_and_database_are_sent_first() -> None:
    async def main() -> None:
        async with FakeRedis(echo_last_arg) as server:
            url = server.url.replace("redis://", "redis://bob:s3cret@").replace("/0", "/3")
            client = ScriptClient(url, timeout_s=60, connect_timeout_s=60)
            assert await client.register_script("x")(args=["z"]) == b"z"
            assert server.commands[:2] == [[b"AUTH", b"bob", b"s3cret"], [b"SELECT", b"3"]]
            await client.aclose()

    run_on_both_loops(main)


def test_a_refused_password_fails_the_call() -> None:
    async def refuse(command: list[bytes], server: FakeRedis) -> bytes:
        if command[0] == b"AUTH":
            return b"-WRONGPASS invalid username-password pair\r\n"
        return b":1\r\n"

    async def main() -> None:
        async with FakeRedis(refuse) as server:
            url = server.url.replace("redis://", "redis://:nope@")
            client = ScriptClient(url, timeout_s=60, connect_timeout_s=60)
            with pytest.raises(RedisConnectionError):  # AuthenticationError is one
                await client.register_script("x")()
            await client.aclose()

    run_on_both_loops(main)


def test_an_unreachable_redis_is_a_connection_error() -> None:
    async def main() -> None:
        client = ScriptClient("redis://127.0.0.1:1/0", timeout_s=1, connect_timeout_s=1)
        with pytest.raises(RedisConnectionError):
            await client.register_script("return 1")()

    run_on_both_loops(main)


@needs_redis
@pytest.mark.redis
def test_scripts_run_on_a_real_redis_and_survive_a_script_flush() -> None:
    assert REDIS_URL is not None

    async def main() -> None:
        assert REDIS_URL is not None
        key = f"test-wire-{uuid.uuid4().hex[:10]}"
        client = ScriptClient(REDIS_URL, timeout_s=60, connect_timeout_s=60)
        incr = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        table = client.register_script("return {1, 'two', {3}}")
        try:
            totals: list[Any] = await asyncio.gather(
                *(incr(keys=[key], args=[2]) for _ in range(50))
            )
            assert sorted(totals) == list(range(2, 101, 2))
            assert await table() == [1, b"two", [3]]
            await client.execute("SCRIPT", "FLUSH")
            assert await incr(keys=[key], args=[1]) == 101
            assert await client.execute("GET", key) == b"101"
        finally:
            await client.execute("DEL", key)
            await client.aclose()

    run_on_both_loops(main)


def test_a_unix_socket_url_connects_there(tmp_path: Any) -> None:
    async def main() -> None:
        path = tmp_path / f"redis-{uuid.uuid4().hex[:6]}.sock"
        seen: list[list[bytes]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            parser = hiredis.Reader()
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    seen.append(command)
                    writer.write(b":9\r\n" if command[0] == b"EVALSHA" else b"+OK\r\n")

        server = await asyncio.start_unix_server(serve, str(path))
        try:
            client = ScriptClient(f"unix://{path}?db=2", timeout_s=60, connect_timeout_s=60)
            assert await client.register_script("return 9")() == 9
            assert seen[0] == [b"SELECT", b"2"] and seen[1][0] == b"EVALSHA"
            await client.aclose()
        finally:
            server.close()

    run_on_both_loops(main)
