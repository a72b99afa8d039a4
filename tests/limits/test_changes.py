"""Account changes reach the other replicas at once, and the caches live long only while they do.

The channel itself (origin filtering, loss and return through a proxy that
can cut it), then two replicas' services built as ``firebox serve`` builds
them, sharing one database and one Redis: an account blocked on one is
refused on the other right away, although its entry there could live 15 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from firebox.accounts.credentials import DEMO_ACCOUNT
from firebox.clock import FakeClock
from firebox.limits.changes import (
    TRUSTED_SUSPENSION_TTL_S,
    LocalChanges,
    RedisChanges,
)
from firebox.limits.hooks import Reason
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY, REDIS_URL
from tests.limits.test_rate_limiter import Proxy

needs_redis = pytest.mark.skipif(REDIS_URL is None, reason="FIREBOX_TEST_REDIS_URL is not set")


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll ``condition``; the deadline is only the failure path, generous for a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_one_process_is_connected_only_when_it_is_the_only_replica() -> None:
    assert LocalChanges(only_replica=True).connected
    assert not LocalChanges(only_replica=False).connected


@needs_redis
@pytest.mark.redis
def test_a_change_reaches_the_other_replicas_but_not_its_origin() -> None:
    assert REDIS_URL is not None
    a, b = RedisChanges(REDIS_URL), RedisChanges(REDIS_URL)
    seen_a: list[str] = []
    seen_b: list[str] = []
    a.subscribe(seen_a.append)
    b.subscribe(seen_b.append)
    try:
        assert a.connected and b.connected
        account = f"acct-{uuid.uuid4().hex[:8]}"
        a.publish(account)
        assert wait_for(lambda: account in seen_b)
        # Redis delivers a channel's messages in publication order: once a has b's later
        # marker, its own change would have reached it before, had it not been filtered.
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        b.publish(marker)
        assert wait_for(lambda: marker in seen_a)
        assert account not in seen_a
    finally:
        a.close()
        b.close()


@needs_redis
@pytest.mark.redis
def test_losing_the_channel_drops_everything_and_its_return_drops_it_again() -> None:
    assert REDIS_URL is not None
    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
    proxy = Proxy(host, int(port))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(proxy.up(), loop).result(60)
    drops: list[float] = []
    changes = RedisChanges(f"redis://127.0.0.1:{proxy.port}/0", retry_s=0.05)
    changes.on_lost = lambda: drops.append(time.monotonic())
    try:
        assert changes.connected
        asyncio.run_coroutine_threadsafe(proxy.down(), loop).result(60)
        assert wait_for(lambda: not changes.connected)
        assert len(drops) == 1 and changes.lost == 1
        asyncio.run_coroutine_threadsafe(proxy.up(), loop).result(60)
        assert wait_for(lambda: changes.connected)
        assert wait_for(lambda: len(drops) == 2)  # what was read while it was down goes too
    finally:
        changes.close()
        asyncio.run_coroutine_threadsafe(proxy.down(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)


@pytest.fixture
def replicas(database: Database, tmp_path: Path) -> Iterator[tuple[Services, Services]]:
    assert REDIS_URL is not None
    clock = FakeClock()
    built = []
    for name in ("a", "b"):
        settings = Settings(
            data_dir=tmp_path / name,
            admin_key=OPERATOR_KEY,
            access_log=False,
            bootstrap_demo=name == "a",
            warm_local_engines=False,
            redis_url=REDIS_URL,
            replicas=2,
        )
        services = build_services(settings, db=database, clock=clock)
        initialize(services)
        built.append(services)
    yield built[0], built[1]
    for services in built:
        services.money.close()
        services.revocations.close()


@needs_redis
@pytest.mark.redis
def test_a_block_on_one_replica_reaches_the_other_s_cache_at_once(
    replicas: tuple[Services, Services],
) -> None:
    a, b = replicas
    assert a.money.changes.connected and b.money.changes.connected
    account = DEMO_ACCOUNT  # made by the bootstrap
    assert b.money.suspension.reasons(account) == ()  # cached on b, trusted for 15 s
    assert b.money.suspension.reasons_cached(account) == ()
    a.money.suspension.raise_reason(account, Reason.BLOCKED_BY_ABUSE_RULE, "test", actor="op")
    assert wait_for(lambda: b.money.suspension.reasons_cached(account) is None)
    assert b.money.suspension.reasons(account) == (Reason.BLOCKED_BY_ABUSE_RULE,)
    # A plan-limit change on a reaches b's cache too.
    before = b.money.plans.limits(account)
    a.money.plans.changed(account)
    assert wait_for(lambda: b.money.plans.cached(account) is None)
    assert b.money.plans.limits(account) == before


@needs_redis
@pytest.mark.redis
def test_entries_live_long_only_while_the_channel_is_up(
    replicas: tuple[Services, Services],
) -> None:
    _, b = replicas
    account = DEMO_ACCOUNT
    clock = b.clock
    assert isinstance(clock, FakeClock)
    b.money.suspension.reasons(account)
    clock.advance(timedelta(seconds=TRUSTED_SUSPENSION_TTL_S - 1))
    assert b.money.suspension.reasons_cached(account) == ()  # still trusted
    b.money.changes._subscribed.clear()  # type: ignore[attr-defined]  # as if the channel broke
    assert b.money.suspension.reasons_cached(account) is None  # back to the 1 s lifetime
