"""Helpers for catalog tests: model bodies as the SDK sends them, and two member accounts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firebox.accounts.bootstrap import run_bootstrap
from firebox.clock import FakeClock
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key, ok


def text_base(params: float | int = 8e9, moe: bool = False, **extra: Any) -> dict[str, Any]:
    """A text base model body, sizes given as the SDK does (an int64 rendered as a string)."""
    return {
        "kind": "HF_BASE_MODEL",
        "displayName": "Base",
        "contextLength": 8192,
        "baseModelDetails": {"parameterCount": str(int(params)), "moe": moe},
        **extra,
    }


def addon(base: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "HF_PEFT_ADDON",
        "peftDetails": {"baseModel": base, "r": 8, "targetModules": ["q_proj", "v_proj"]},
        **extra,
    }


def embedding(params: float | int = 22_700_000, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "EMBEDDING_MODEL",
        "contextLength": 256,
        "baseModelDetails": {"parameterCount": str(int(params))},
        **extra,
    }


UPSTREAM = {
    "type": "upstream",
    "urls": ["http://gpu-1:8000/v1", "https://gpu-2.example.com/v1/"],
    "upstreamModel": "meta-llama/Llama-3.1-8B-Instruct",
    "apiKey": "sk-upstream-secret",
    "timeoutS": 30,
}


def post_model(
    client: TestClient, headers: dict[str, str], account: str, model_id: str, model: dict[str, Any]
) -> Any:
    """POST as the fireworks-ai SDK does: ``{"modelId", "model"}`` in the body."""
    return client.post(
        f"/v1/accounts/{account}/models",
        json={"modelId": model_id, "model": model},
        headers=headers,
    )


def create_model(
    client: TestClient, headers: dict[str, str], account: str, model_id: str, model: dict[str, Any]
) -> dict[str, Any]:
    return ok(post_model(client, headers, account, model_id, model))


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@dataclass(frozen=True)
class Members:
    """Keys of account ``acme`` (user, contributor, inference-user) and ``globex`` (user)."""

    acme_user: dict[str, str]
    acme_contributor: dict[str, str]
    acme_inference: dict[str, str]
    globex_user: dict[str, str]


@pytest.fixture
def members(client: TestClient, operator_headers: dict[str, str]) -> Members:
    create_account(client, operator_headers, "acme")
    create_account(client, operator_headers, "globex")

    def key(account: str, user: str, role: str) -> dict[str, str]:
        return bearer(member_key(client, operator_headers, account, user, role))

    return Members(
        acme_user=key("acme", "ann", "user"),
        acme_contributor=key("acme", "carl", "contributor"),
        acme_inference=key("acme", "ivy", "inference-user"),
        globex_user=key("globex", "gus", "user"),
    )


@pytest.fixture
def services(settings: Settings, database: Database, clock: FakeClock) -> Iterator[Services]:
    """Like the suite's, but with an empty catalog: these tests load catalogs themselves."""
    built = build_services(settings, db=database, clock=clock)
    run_bootstrap(database, clock, admin_key=OPERATOR_KEY, with_demo=True)
    yield built
    built.revocations.close()
