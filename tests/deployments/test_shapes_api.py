"""Deployment shapes: the bundled public one, operator writes and versions, and :match."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.deployments.conftest import LORA, TINY, Member
from tests.support.api import ok

SHAPES = "/v1/accounts/firebox/deploymentShapes"


def test_public_shapes_are_listed_for_every_account(client: TestClient, dev: Member) -> None:
    listed = ok(client.get(SHAPES, headers=dev.headers))
    names = [s["name"] for s in listed["deploymentShapes"]]
    assert "accounts/firebox/deploymentShapes/firebox-tiny-minimal" in names
    shape = ok(client.get(f"{SHAPES}/firebox-tiny-minimal", headers=dev.headers))
    assert (shape["baseModel"], shape["acceleratorType"], shape["acceleratorCount"]) == (
        TINY,
        "NVIDIA_A100_80GB",
        1,
    )
    versions = ok(client.get(f"{SHAPES}/firebox-tiny-minimal/versions", headers=dev.headers))
    assert [v["name"] for v in versions["deploymentShapeVersions"]] == [
        "accounts/firebox/deploymentShapes/firebox-tiny-minimal/versions/1"
    ]
    latest = ok(client.get(f"{SHAPES}/firebox-tiny-minimal/versions/latest", headers=dev.headers))
    assert latest["latestValidated"] is True and latest["snapshot"]["precision"] == "BF16"
    targeted = ok(client.get(f"{SHAPES}?targetModel={LORA}", headers=dev.headers))
    assert len(targeted["deploymentShapes"]) == 1
    embedding = client.get(
        f"{SHAPES}?targetModel=accounts/firebox/models/all-minilm-l6-v2", headers=dev.headers
    )
    assert embedding.json()["error"]["code"] == "model_not_deployable"
    assert client.get(f"{SHAPES}/nope", headers=dev.headers).status_code == 404


def test_operator_writes_versions_and_members_cannot(
    client: TestClient, operator_headers: dict[str, str], dev: Member
) -> None:
    body = {"baseModel": TINY, "acceleratorCount": 2, "precision": "FP8", "public": True}
    made = ok(
        client.post(f"{SHAPES}?deploymentShapeId=tiny-fast", json=body, headers=operator_headers)
    )
    assert made["acceleratorCount"] == 2
    again = ok(
        client.patch(f"{SHAPES}/tiny-fast", json={"acceleratorCount": 4}, headers=operator_headers)
    )
    assert (again["acceleratorCount"], again["precision"]) == (4, "FP8")
    taken = client.post(
        f"{SHAPES}?deploymentShapeId=tiny-fast", json=body, headers=operator_headers
    )
    assert taken.status_code == 409 and taken.headers["x-should-retry"] == "false"
    absent = client.patch(f"{SHAPES}/nope", json={"acceleratorCount": 4}, headers=operator_headers)
    assert absent.status_code == 404
    versions = ok(client.get(f"{SHAPES}/tiny-fast/versions", headers=dev.headers))
    assert [v["snapshot"]["acceleratorCount"] for v in versions["deploymentShapeVersions"]] == [
        2,
        4,
    ]
    assert (
        client.post(f"{SHAPES}?deploymentShapeId=x", json=body, headers=dev.headers).status_code
        == 403
    )
    bad = client.post(
        f"{SHAPES}?deploymentShapeId=x",
        json={**body, "acceleratorType": "TPU"},
        headers=operator_headers,
    )
    assert bad.json()["error"]["code"] == "invalid_shape"

    # A deployment from the shape takes its fields and stores the version's name.
    made_dep = ok(
        client.post(
            f"{dev.base}?deploymentId=from-shape",
            json={
                "baseModel": TINY,
                "deploymentShape": "accounts/firebox/deploymentShapes/tiny-fast",
            },
            headers=dev.headers,
        )
    )
    assert made_dep["deploymentShape"] == "accounts/firebox/deploymentShapes/tiny-fast/versions/2"
    assert (made_dep["acceleratorCount"], made_dep["precision"]) == (4, "FP8")
    missing = client.post(
        f"{dev.base}?deploymentId=y",
        json={"baseModel": TINY, "deploymentShape": "nope"},
        headers=dev.headers,
    )
    assert missing.status_code == 404
    ok(client.delete(f"{SHAPES}/tiny-fast", headers=operator_headers))
    assert client.get(f"{SHAPES}/tiny-fast", headers=dev.headers).status_code == 404


def test_match_finds_shapes_for_a_model_and_its_addons(client: TestClient, dev: Member) -> None:
    url = f"/v1/accounts/{dev.account}/deploymentShapeVersions:match"
    for model in (TINY, LORA):
        body = {
            "createDeploymentRequest": {
                "parent": "accounts/dev-co",
                "deployment": {"baseModel": model, "enableAddons": True},
            }
        }
        found = ok(client.post(url, json=body, headers=dev.headers))
        assert [v["name"] for v in found["deploymentShapeVersions"]] == [
            "accounts/firebox/deploymentShapes/firebox-tiny-minimal/versions/1"
        ]
    bad = client.post(url, json={"createDeploymentRequest": {}}, headers=dev.headers)
    assert bad.status_code == 400
