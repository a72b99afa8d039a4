"""NUL and control characters in requests: the same 400 on SQLite and PostgreSQL.

PostgreSQL cannot store a NUL in a text column (psycopg raises ``DataError``);
SQLite stores it. Validation at the edge makes both stores answer alike, and
the store maps whatever still reaches the driver to a 400.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DataError

from firebox.errors import InvalidArgument
from firebox.store.database import Database

NUL = "\x00"

# case -> (method, url, json body, the error's param): a NUL in a create, patch or read.
NUL_REQUESTS: dict[str, tuple[str, str, Any, str | None]] = {
    "account display name": (
        "POST",
        "/v1/accounts?accountId=nul",
        {"displayName": f"a{NUL}b"},
        "displayName",
    ),
    "account id (query)": ("POST", "/v1/accounts?accountId=a%00b", {}, "accountId"),
    "account email": (
        "PATCH",
        "/v1/accounts/demo",
        {"email": f"a{NUL}b@example.com"},
        "email",
    ),
    "account patch": ("PATCH", "/v1/accounts/demo", {"displayName": f"x{NUL}"}, "displayName"),
    "account id (path)": ("GET", "/v1/accounts/de%00mo", None, None),
    "account id (path, patch)": ("PATCH", "/v1/accounts/de%00mo", {"displayName": "x"}, None),
    "user display name": (
        "POST",
        "/v1/accounts/demo/users?userId=u1",
        {"role": "user", "displayName": NUL},
        "displayName",
    ),
    "user id (query)": ("POST", "/v1/accounts/demo/users?userId=u%001", {"role": "user"}, "userId"),
    "user patch": (
        "PATCH",
        "/v1/accounts/demo/users/demo",
        {"displayName": f"d{NUL}"},
        "displayName",
    ),
    "user id (path)": ("PATCH", "/v1/accounts/demo/users/de%00mo", {"displayName": "d"}, None),
    "api key display name": (
        "POST",
        "/v1/accounts/demo/users/demo/apiKeys",
        {"apiKey": {"displayName": f"k{NUL}"}},
        "apiKey.displayName",
    ),
    "api key delete id": (
        "POST",
        "/v1/accounts/demo/users/demo/apiKeys:delete",
        {"keyId": f"k{NUL}"},
        "keyId",
    ),
    "model description": (
        "POST",
        "/v1/accounts/firebox/models?modelId=m1",
        {
            "model": {
                "kind": "EMBEDDING_MODEL",
                "contextLength": 256,
                "description": f"d{NUL}",
                "baseModelDetails": {"parameterCount": "22700000"},
            }
        },
        "model.description",
    ),
    "model id (body)": ("POST", "/v1/accounts/firebox/models", {"modelId": f"m{NUL}"}, "modelId"),
    "model id (path)": ("PATCH", "/v1/accounts/firebox/models/m%001", {"displayName": "x"}, None),
    "deployed model's model": (
        "POST",
        "/v1/accounts/demo/deployedModels",
        {"model": f"accounts/firebox/models/x{NUL}"},
        "model",
    ),
    "deployed model id (path)": (
        "PATCH",
        "/v1/accounts/demo/deployedModels/d%00",
        {"displayName": "x"},
        None,
    ),
    "list filter": ("GET", "/v1/accounts?filter=a%00", None, "filter"),
    "page token": ("GET", "/v1/accounts/demo/users?pageToken=%00", None, "pageToken"),
    "chat prompt": (
        "POST",
        "/inference/v1/chat/completions",
        {"model": "accounts/firebox/models/x", "messages": [{"role": "user", "content": NUL}]},
        "messages.0.content",
    ),
    "completion prompt": (
        "POST",
        "/inference/v1/completions",
        {"model": "accounts/firebox/models/x", "prompt": ["ok", f"a{NUL}"]},
        "prompt.1",
    ),
    "embedding input": (
        "POST",
        "/inference/v1/embeddings",
        {"model": "accounts/firebox/models/x", "input": f"a{NUL}"},
        "input",
    ),
}


@pytest.mark.parametrize("case", sorted(NUL_REQUESTS))
def test_a_nul_is_a_400_on_every_store(
    client: TestClient, operator_headers: dict[str, str], case: str
) -> None:
    method, url, body, param = NUL_REQUESTS[case]
    response = client.request(method, url, json=body, headers=operator_headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["status"]) == (
        "invalid_characters",
        param,
        "INVALID_ARGUMENT",
    ), error
    assert "U+0000" in error["message"], error


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused_in_names(
    client: TestClient, operator_headers: dict[str, str], char: str
) -> None:
    response = client.post(
        "/v1/accounts?accountId=ctl",
        json={"displayName": f"a{char}b"},
        headers=operator_headers,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_characters", "displayName")


def test_tab_and_newlines_are_text(client: TestClient, operator_headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/accounts?accountId=tabs",
        json={"displayName": "a\tb\r\nc"},
        headers=operator_headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["displayName"] == "a\tb\r\nc"


def test_control_characters_in_a_prompt_are_the_engines_business(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    """Only NUL is refused in prompts: the answer is about the model, not the text."""
    response = client.post(
        "/inference/v1/completions",
        json={"model": "accounts/firebox/models/missing", "prompt": "a\x1b[0mb"},
        headers=operator_headers,
    )
    assert response.status_code == 404, response.text


def test_the_store_maps_a_data_error_to_a_400(database: Database) -> None:
    """Whatever slips past the edge: the driver's ``DataError`` is a 400, never a 500."""
    with pytest.raises(InvalidArgument) as raised, database.transaction() as session:
        if database.is_sqlite:  # SQLite stores a NUL; stand in for the rare error it raises
            raise DataError("SELECT ?", ("x",), sqlite3.DataError("string or blob too big"))
        session.execute(text("SELECT CAST(:v AS TEXT)"), {"v": f"a{NUL}"})
    assert (raised.value.code, raised.value.http_status) == ("invalid_value", 400)
    assert isinstance(raised.value.__cause__, DataError)


@pytest.mark.parametrize("where", ["/v1/accounts/a%01b", "/v1/accounts?filter=%0a"])
def test_control_characters_in_the_url_are_refused(
    client: TestClient, operator_headers: dict[str, str], where: str
) -> None:
    """Ids, tokens and filters are single-line: no control character at all."""
    response = client.get(where, headers=operator_headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_characters"


def test_first_nul_names_the_string_whatever_the_encoding_shortcut_says() -> None:
    """``first_nul`` answers from an orjson encoding when it can; its answers are the walk's."""
    from firebox.text import first_nul

    assert first_nul({"messages": [{"role": "user", "content": "ok"}]}) is None
    assert first_nul({"messages": [{"content": "a"}, {"content": "b\x00"}]}) == "messages.1.content"
    assert first_nul({"stop": ["x", "\x00"]}) == "stop.1"
    assert first_nul({"k\x00": 1}) == "k\x00"  # a key
    assert first_nul({"content": "\\u0000 is how JSON writes a NUL"}) is None  # text, no NUL
    assert first_nul({"ids": {1: "a\x00"}}) == "ids.1"  # orjson cannot encode it: walked
    assert first_nul({"n": 2**70, "s": "\x00"}) == "s"  # nor this (an int past 64 bits)
