"""Loading LoRA add-ons onto a deployment through the deployedModels API (the runtime off)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.support.api import ok

from .conftest import LORA, TINY, Member


def deployment(client: TestClient, member: Member, dep_id: str, **body: Any) -> dict[str, Any]:
    payload = {"baseModel": TINY, **body}
    return ok(
        client.post(f"{member.base}?deploymentId={dep_id}", json=payload, headers=member.headers)
    )


def load(client: TestClient, member: Member, **body: Any) -> Any:
    return client.post(
        f"/v1/accounts/{member.account}/deployedModels", json=body, headers=member.headers
    )


def test_many_addons_on_one_deployment_and_the_placement_rules(
    client: TestClient, ent: Member, dev: Member, operator_headers: dict[str, str]
) -> None:
    name = deployment(client, ent, "d1", enableAddons=True)["name"]
    closed = deployment(client, ent, "d2")["name"]  # enableAddons false
    # A second add-on of the tiny base, in the account (same adapter folder).
    made = client.post(
        f"/v1/accounts/{ent.account}/models",
        json={
            "modelId": "mine",
            "model": {
                "kind": "HF_PEFT_ADDON",
                "peftDetails": {"baseModel": TINY, "r": 8, "targetModules": ["q_proj"]},
                "adapterPath": "firebox-tiny-lora",
            },
        },
        headers=operator_headers,
    )
    assert made.status_code == 200, made.text
    mine = f"accounts/{ent.account}/models/mine"

    first = ok(load(client, ent, model=LORA, deployment=name))
    second = ok(load(client, ent, model=mine, deployment="d1"))  # the short id works too
    for placed in (first, second):
        assert placed["deployment"] == name
        assert placed["serverless"] is False and placed["state"] == "DEPLOYING"
    listed = ok(client.get(f"/v1/accounts/{ent.account}/deployedModels", headers=ent.headers))
    assert {d["deployment"] for d in listed["deployedModels"]} == {name}

    taken = load(client, ent, model=LORA, deployment=closed)
    assert taken.status_code == 409  # an account loads an add-on once (serverless or placed)
    elsewhere = load(client, dev, model=LORA, deployment=name)
    assert elsewhere.status_code == 404  # another account's deployment
    assert elsewhere.json()["error"]["code"] == "deployment_not_found"

    fresh = deployment(client, ent, "d3", enableAddons=True)["name"]
    client.delete(f"/v1/accounts/{ent.account}/deployedModels/{first['name'].rpartition('/')[2]}",
                  headers=ent.headers).raise_for_status()  # fmt: skip
    no_addons = load(client, ent, model=LORA, deployment=closed)
    assert no_addons.status_code == 400, no_addons.text
    assert no_addons.json()["error"]["code"] == "addons_not_enabled"
    moved = ok(load(client, ent, model=LORA, deployment=fresh))
    assert moved["deployment"] == fresh
