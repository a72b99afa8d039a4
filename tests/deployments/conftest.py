"""Fixtures of the deployments API tests: accounts on each plan, with member keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.support.api import bearer, create_account, member_key

TINY = "accounts/firebox/models/firebox-tiny"
LORA = "accounts/firebox/models/firebox-tiny-lora"


@dataclass
class Member:
    account: str
    headers: dict[str, str]

    @property
    def base(self) -> str:
        return f"/v1/accounts/{self.account}/deployments"


def make_member(client: TestClient, operator: dict[str, str], account: str, plan: str) -> Member:
    create_account(client, operator, account, plan=plan)
    key = member_key(client, operator, account, "dana", "user")
    return Member(account, bearer(key))


@pytest.fixture
def dev(client: TestClient, operator_headers: dict[str, str]) -> Member:
    return make_member(client, operator_headers, "dev-co", "DEVELOPER")


@pytest.fixture
def ent(client: TestClient, operator_headers: dict[str, str]) -> Member:
    return make_member(client, operator_headers, "ent-co", "ENTERPRISE")
