"""A deployed model's quota unit is released once, by the unload that removed it (issue 15 #1).

The race itself runs in tests/e2e/test_races.py; here the two halves of a
lost race are played in order, on each store: a second unload of a row the
first one already removed must release nothing and answer 404.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from firebox.catalog.deployed_repository import get as get_deployed
from firebox.services import Services
from tests.catalog.conftest import UPSTREAM, Members, addon, create_model, text_base
from tests.support.api import ok
from tests.support.races import violations

BASE = "accounts/firebox/models/llama-8b"


def _usage(client: TestClient, headers: dict[str, str]) -> int:
    quota = ok(client.get("/v1/accounts/acme/quotas/deployed-models", headers=headers))
    return int(quota["usage"])


def test_a_second_unload_of_a_removed_row_releases_nothing(
    client: TestClient, members: Members, services: Services, operator_headers: dict[str, str]
) -> None:
    create_model(
        client, operator_headers, "firebox", "llama-8b", text_base(public=True, engine=UPSTREAM)
    )
    for name in ("sql", "chat"):
        create_model(client, members.acme_user, "acme", name, addon(BASE))
        ok(
            client.post(
                "/v1/accounts/acme/deployedModels",
                json={"model": f"accounts/acme/models/{name}"},
                headers=members.acme_user,
            )
        )
    assert _usage(client, members.acme_user) == 2
    deployed = services.catalog.deployed_models
    with services.db.transaction() as session:
        row = get_deployed(session, "acme", "sql")
        assert row is not None
        pk = row.pk

    # Both racers got past their first step; the first one's delete wins.
    assert deployed._forget(pk) is True
    assert deployed._forget(pk) is False  # the loser removed nothing ...
    assert _usage(client, members.acme_user) == 1  # ... and released nothing
    assert violations(services.db) == []

    # The racer that comes later still finds nothing to unload: a 404, not a 500.
    gone = client.delete("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user)
    assert gone.status_code == 404, gone.text
    assert _usage(client, members.acme_user) == 1
