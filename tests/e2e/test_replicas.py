"""Two gateway processes sharing PostgreSQL and Redis: a revoked key dies everywhere at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import OPERATOR_KEY, PG_URL, REDIS_URL
from tests.e2e.conftest import drop_schema, pg_schema_url
from tests.support.server import RunningServer, start_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    if not (PG_URL and REDIS_URL):
        pytest.skip("needs FIREBOX_TEST_DATABASE_URL and FIREBOX_TEST_REDIS_URL (set in CI)")
    schema, url = pg_schema_url()
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_DATABASE_URL": url,
        "FIREBOX_REDIS_URL": REDIS_URL,
        "FIREBOX_KEY_CACHE_TTL_S": "3600",  # only the broadcast can make B forget a key
    }
    a = start_server(tmp_path / "a", env=env)
    b = start_server(tmp_path / "b", env=env)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
        drop_schema(schema)


def test_revocation_across_replicas(two_replicas: tuple[RunningServer, RunningServer]) -> None:
    a, b = two_replicas
    op = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    with httpx.Client(headers=op, timeout=60) as http:
        assert http.post(f"{a.url}/v1/accounts", params={"accountId": "multi"}, json={}).is_success
        assert http.post(
            f"{b.url}/v1/accounts/multi/users", params={"userId": "u"}, json={"role": "admin"}
        ).is_success
        for _ in range(30):
            created = http.post(f"{a.url}/v1/accounts/multi/users/u/apiKeys", json={}).json()
            key = {"Authorization": f"Bearer {created['key']}"}
            assert (
                httpx.get(f"{b.url}/v1/accounts/multi", headers=key, timeout=60).status_code == 200
            )
            deleted = http.post(
                f"{a.url}/v1/accounts/multi/users/u/apiKeys:delete",
                json={"keyId": created["keyId"]},
            )
            assert deleted.is_success
            assert (
                httpx.get(f"{b.url}/v1/accounts/multi", headers=key, timeout=60).status_code == 401
            )
