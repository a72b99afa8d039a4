"""A revoked key is refused by the very next request, on every replica.

Two gateway replicas (two full service graphs) share one database and, when
FIREBOX_TEST_REDIS_URL is set, one Redis. Replica B has the key cached; the
key is deleted through replica A; B must refuse it at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from firebox.accounts import key_cache as key_cache_module
from firebox.accounts.key_cache import KeyCache
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.app import create_app
from firebox.clock import FakeClock
from firebox.services import build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.conftest import REDIS_URL
from tests.support.api import bearer, create_account, create_key, create_user, ok


def _principal(key_hash: str) -> Principal:
    return Principal("a", "u", 1, Role.USER, "key_1", key_hash)


def test_cache_drops_an_entry_on_invalidate_and_ignores_a_racing_load() -> None:
    cache = KeyCache(ttl_s=60)
    epoch = cache.epoch()
    cache.put(_principal("h1"), epoch)
    assert cache.get("h1") is not None
    cache.invalidate("h1")
    assert cache.get("h1") is None
    # A load that started before the invalidation must not re-insert the stale key.
    stale_epoch = cache.epoch()
    cache.invalidate("h2")
    cache.put(_principal("h2"), stale_epoch)
    assert cache.get("h2") is None


def test_cache_entries_expire_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache ages entries by the monotonic clock: a fake one, so that a descheduled
    # test process cannot expire the entry before the first read.
    now = [1000.0]
    monkeypatch.setattr(key_cache_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    cache = KeyCache(ttl_s=0.05)
    cache.put(_principal("h"), cache.epoch())
    now[0] += 0.04
    assert cache.get("h") is not None
    now[0] += 0.02
    assert cache.get("h") is None


def test_cache_is_bounded() -> None:
    cache = KeyCache(ttl_s=60, max_entries=3)
    for i in range(5):
        cache.put(_principal(f"h{i}"), cache.epoch())
    assert len(cache) == 3
    assert cache.get("h0") is None and cache.get("h4") is not None


@pytest.fixture
def replicas(
    database: Database, clock: FakeClock, settings: Settings
) -> Iterator[tuple[TestClient, TestClient]]:
    if not REDIS_URL:
        pytest.skip("cross-replica revocation needs FIREBOX_TEST_REDIS_URL (set in CI)")
    shared = settings.model_copy(update={"redis_url": REDIS_URL, "key_cache_ttl_s": 3600})
    a = build_services(shared, db=database, clock=clock)
    b = build_services(shared, db=database, clock=clock)
    from firebox.accounts.bootstrap import run_bootstrap
    from tests.conftest import OPERATOR_KEY

    run_bootstrap(database, clock, admin_key=OPERATOR_KEY, with_demo=False)
    with TestClient(create_app(a)) as ca, TestClient(create_app(b)) as cb:
        yield ca, cb


@pytest.mark.redis
def test_revocation_reaches_every_replica_before_the_next_request(
    replicas: tuple[TestClient, TestClient], operator_headers: dict[str, str]
) -> None:
    a, b = replicas
    create_account(a, operator_headers, "acme")
    create_user(a, operator_headers, "acme", "alice", "admin")
    for _ in range(25):
        created = create_key(a, operator_headers, "acme", "alice")
        key = bearer(created["key"])
        ok(b.get("/v1/accounts/acme", headers=key))  # B now holds it in its cache
        ok(
            a.post(
                "/v1/accounts/acme/users/alice/apiKeys:delete",
                json={"keyId": created["keyId"]},
                headers=operator_headers,
            )
        )
        assert b.get("/v1/accounts/acme", headers=key).status_code == 401
        assert a.get("/v1/accounts/acme", headers=key).status_code == 401
