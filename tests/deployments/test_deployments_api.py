"""The deployments resource through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from firebox.clock import FakeClock
from firebox.services import Services
from tests.deployments.conftest import LORA, TINY, Member
from tests.support.api import ok


def _quota(client: TestClient, member: Member, quota: str) -> dict[str, Any]:
    return ok(client.get(f"/v1/accounts/{member.account}/quotas/{quota}", headers=member.headers))


def _create(client: TestClient, member: Member, dep_id: str, **body: Any) -> Any:
    payload = {"baseModel": TINY, **body}
    return client.post(f"{member.base}?deploymentId={dep_id}", json=payload, headers=member.headers)


def test_create_fills_defaults_and_claims_quota(client: TestClient, dev: Member) -> None:
    made = ok(_create(client, dev, "d1", placement={"region": "US_IOWA_1"}, unknownField=1))
    assert made["name"] == "accounts/dev-co/deployments/d1"
    assert made["baseModel"] == TINY
    assert made["state"] == "CREATING"
    assert (made["acceleratorType"], made["acceleratorCount"]) == ("NVIDIA_A100_80GB", 1)
    assert (made["minReplicaCount"], made["maxReplicaCount"]) == (0, 1)
    assert made["autoscalingPolicy"] == {
        "scaleUpWindow": "30s",
        "scaleDownWindow": "600s",
        "scaleToZeroWindow": "3600s",
        "loadTargets": {"default": 0.8},
    }
    assert made["replicaStats"]["readyReplicaCount"] == 0
    assert made["status"] == {"code": "OK", "message": ""}
    assert _quota(client, dev, "a100-gpus")["usage"] == 1
    assert _quota(client, dev, "deployed-models")["usage"] == 1

    got = ok(client.get(f"{dev.base}/d1", headers=dev.headers))
    assert got["name"] == made["name"]
    assert got["recentEvents"][0]["kind"] == "CREATE"
    # A full resource name as the id, percent-encoded as the SDK sends it.
    encoded = ok(
        client.get(f"{dev.base}/accounts%2Fdev-co%2Fdeployments%2Fd1", headers=dev.headers)
    )
    assert encoded["name"] == made["name"]


def test_durations_accept_minutes_and_hours(client: TestClient, dev: Member) -> None:
    policy = {"scaleUpWindow": "1m", "scaleDownWindow": "1h", "scaleToZeroWindow": "10m"}
    made = ok(_create(client, dev, "d2", autoscalingPolicy=policy, maxReplicaCount=2))
    assert made["autoscalingPolicy"]["scaleUpWindow"] == "60s"
    assert made["autoscalingPolicy"]["scaleDownWindow"] == "3600s"
    assert made["autoscalingPolicy"]["scaleToZeroWindow"] == "600s"
    assert _quota(client, dev, "a100-gpus")["usage"] == 2


def test_bad_inputs_are_clear_400s(client: TestClient, dev: Member) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"autoscalingPolicy": {"scaleUpWindow": "2h"}}, "invalid_autoscaling_window"),
        ({"autoscalingPolicy": {"scaleToZeroWindow": "60s"}}, "invalid_autoscaling_window"),
        ({"autoscalingPolicy": {"scaleDownWindow": "soon"}}, "invalid_duration"),
        ({"autoscalingPolicy": {"loadTargets": {"default": 2}}}, "invalid_load_target"),
        ({"autoscalingPolicy": {"loadTargets": {"gpu": 0.5}}}, "invalid_load_target"),
        ({"minReplicaCount": 3, "maxReplicaCount": 1}, "invalid_replica_counts"),
        ({"acceleratorType": "TPU_V5"}, "invalid_accelerator_type"),
        ({"precision": "FP3"}, "invalid_precision"),
        ({"maxContextLength": 999999}, "invalid_max_context_length"),
    ]
    for body, code in cases:
        response = _create(client, dev, "bad", **body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == code, (body, response.text)
    response = client.post(f"{dev.base}?deploymentId=bad", json={}, headers=dev.headers)
    assert response.json()["error"]["code"] == "missing_field"
    response = _create(client, dev, "Bad_Id")
    assert response.json()["error"]["code"] == "invalid_id"
    response = client.post(
        f"{dev.base}?deploymentId=bad", json={"baseModel": "nope"}, headers=dev.headers
    )
    assert response.status_code == 404
    response = client.post(
        f"{dev.base}?deploymentId=bad",
        json={"baseModel": "accounts/firebox/models/all-minilm-l6-v2"},
        headers=dev.headers,
    )
    assert response.json()["error"]["code"] == "model_not_deployable"
    response = _create(client, dev, "bad", minReplicaCount=-1)
    assert response.status_code == 400
    assert ok(client.get(dev.base, headers=dev.headers))["deployments"] == []
    assert _quota(client, dev, "a100-gpus")["usage"] == 0


def test_lora_addon_is_deployable_as_live_merge(client: TestClient, dev: Member) -> None:
    made = ok(client.post(dev.base, json={"baseModel": LORA}, headers=dev.headers))
    assert made["baseModel"] == LORA
    assert len(made["name"].rsplit("/", 1)[1]) == 8  # a generated id


def test_validate_only_persists_nothing(client: TestClient, dev: Member) -> None:
    response = client.post(
        f"{dev.base}?deploymentId=dry&validateOnly=true",
        json={"baseModel": TINY, "maxReplicaCount": 4},
        headers=dev.headers,
    )
    assert ok(response)["name"] == "accounts/dev-co/deployments/dry"
    assert client.get(f"{dev.base}/dry", headers=dev.headers).status_code == 404
    assert _quota(client, dev, "a100-gpus")["usage"] == 0
    assert _quota(client, dev, "deployed-models")["usage"] == 0
    # It still checks everything, quotas included.
    response = client.post(
        f"{dev.base}?deploymentId=dry&validateOnly=true",
        json={"baseModel": TINY, "maxReplicaCount": 9},
        headers=dev.headers,
    )
    assert response.json()["error"]["code"] == "quota_exceeded"


def test_quota_error_names_quota_value_and_usage(client: TestClient, dev: Member) -> None:
    ok(_create(client, dev, "big", acceleratorCount=2, maxReplicaCount=3))  # 6 of 8
    response = _create(client, dev, "more", acceleratorCount=3)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "a100-gpus" in error["message"] and "is 8 and 6 in use" in error["message"]
    assert "operator" in error["message"]
    assert _quota(client, dev, "a100-gpus")["usage"] == 6


def _price_h100(services: Services, account_id: str, micros_per_hour: int) -> None:
    """The operator's price for the account's H100s (SPEC §2: H100 is operator-priced)."""
    from firebox.billing.models import PriceOverrideRow

    now = services.clock.now()
    with services.db.transaction() as session:
        session.add(
            PriceOverrideRow(
                account_id=account_id,
                target="H100_80GB",
                unit_price_micros=micros_per_hour,
                effective_from=now - timedelta(days=1),
                create_time=now,
            )
        )
    services.money.overrides.refresh()


def test_h100_needs_enterprise(
    client: TestClient, services: Services, dev: Member, ent: Member
) -> None:
    response = _create(client, dev, "h", acceleratorType="NVIDIA_H100_80GB")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "plan_required"
    assert "Enterprise" in response.json()["error"]["message"]
    # Enterprise, but the operator has not priced H100s yet: refused before anything runs.
    unpriced = _create(client, ent, "h", acceleratorType="NVIDIA_H100_80GB")
    assert unpriced.status_code == 400
    assert unpriced.json()["error"]["code"] == "gpu_type_not_priced"
    assert _quota(client, ent, "h100-gpus")["usage"] == 0
    _price_h100(services, ent.account, 9_000_000)
    made = ok(_create(client, ent, "h", acceleratorType="NVIDIA_H100_80GB", acceleratorCount=2))
    assert made["acceleratorType"] == "NVIDIA_H100_80GB"
    assert _quota(client, ent, "h100-gpus")["usage"] == 2
    assert _quota(client, ent, "a100-gpus")["usage"] == 0


def test_duplicate_id_is_409_without_retry(client: TestClient, dev: Member) -> None:
    ok(_create(client, dev, "dup"))
    response = _create(client, dev, "dup")
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"
    assert _quota(client, dev, "deployed-models")["usage"] == 1


def test_patch_applies_keys_present_or_update_mask(client: TestClient, dev: Member) -> None:
    ok(_create(client, dev, "p", displayName="first", maxReplicaCount=2))
    changed = ok(
        client.patch(
            f"{dev.base}/p",
            json={"baseModel": TINY, "displayName": "second", "acceleratorCount": 2},
            headers=dev.headers,
        )
    )
    assert (changed["displayName"], changed["acceleratorCount"]) == ("second", 2)
    assert changed["maxReplicaCount"] == 2  # untouched
    assert _quota(client, dev, "a100-gpus")["usage"] == 4
    # With updateMask, only the masked fields change; a masked field left out is reset.
    masked = ok(
        client.patch(
            f"{dev.base}/p?updateMask=display_name,autoscalingPolicy.scaleUpWindow",
            json={"baseModel": TINY, "acceleratorCount": 4, "autoscalingPolicy": {}},
            headers=dev.headers,
        )
    )
    assert masked["acceleratorCount"] == 2
    assert masked["displayName"] == ""
    assert masked["autoscalingPolicy"]["scaleUpWindow"] == "30s"
    response = client.patch(f"{dev.base}/p", json={"baseModel": LORA}, headers=dev.headers)
    assert response.json()["error"]["code"] == "base_model_immutable"
    response = client.patch(
        f"{dev.base}/p?updateMask=state", json={"baseModel": TINY}, headers=dev.headers
    )
    assert response.json()["error"]["code"] == "invalid_update_mask"
    # Beyond the quota: refused, and nothing changed.
    response = client.patch(f"{dev.base}/p", json={"maxReplicaCount": 5}, headers=dev.headers)
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert ok(client.get(f"{dev.base}/p", headers=dev.headers))["maxReplicaCount"] == 2
    assert _quota(client, dev, "a100-gpus")["usage"] == 4


def test_scale_holds_an_explicit_count(client: TestClient, dev: Member) -> None:
    ok(_create(client, dev, "s"))
    scaled = ok(client.patch(f"{dev.base}/s:scale", json={"replicaCount": 3}, headers=dev.headers))
    assert scaled["desiredReplicaCount"] == 3
    assert scaled["fixedReplicaCount"] == 3
    assert _quota(client, dev, "a100-gpus")["usage"] == 3
    response = client.patch(f"{dev.base}/s:scale", json={"replicaCount": 9}, headers=dev.headers)
    assert response.json()["error"]["code"] == "quota_exceeded"
    ok(client.patch(f"{dev.base}/s:scale", json={"replicaCount": 0}, headers=dev.headers))
    assert _quota(client, dev, "a100-gpus")["usage"] == 1  # max(maxReplicaCount=1, 0)
    # A new autoscaling policy returns it to autoscaling.
    back = ok(client.patch(f"{dev.base}/s", json={"minReplicaCount": 1}, headers=dev.headers))
    assert back["fixedReplicaCount"] is None
    response = client.patch(f"{dev.base}/s:scale", json={"replicaCount": -1}, headers=dev.headers)
    assert response.status_code == 400


def test_delete_undelete_and_show_deleted(client: TestClient, dev: Member) -> None:
    ok(_create(client, dev, "x", maxReplicaCount=2))
    ok(client.delete(f"{dev.base}/x", headers=dev.headers))
    assert _quota(client, dev, "a100-gpus")["usage"] == 0
    assert _quota(client, dev, "deployed-models")["usage"] == 0
    gone = client.get(f"{dev.base}/x", headers=dev.headers)
    assert gone.status_code == 200 and gone.json()["state"] == "DELETING"
    assert gone.json()["deleteTime"] and gone.json()["purgeTime"]
    assert ok(client.get(dev.base, headers=dev.headers))["deployments"] == []
    shown = ok(client.get(f"{dev.base}?showDeleted=true", headers=dev.headers))
    assert [d["name"] for d in shown["deployments"]] == ["accounts/dev-co/deployments/x"]
    assert client.delete(f"{dev.base}/x", headers=dev.headers).status_code == 404
    back = ok(client.post(f"{dev.base}/x:undelete", json={}, headers=dev.headers))
    assert back["state"] == "CREATING" and back["deleteTime"] is None
    assert _quota(client, dev, "a100-gpus")["usage"] == 2
    again = client.post(f"{dev.base}/x:undelete", json={}, headers=dev.headers)
    assert again.json()["error"]["code"] == "not_deleted"
    ok(client.delete(f"{dev.base}/x?hard=true", headers=dev.headers))
    assert client.get(f"{dev.base}/x", headers=dev.headers).status_code == 404
    assert _quota(client, dev, "a100-gpus")["usage"] == 0


def test_list_pages_filters_and_orders(client: TestClient, dev: Member) -> None:
    for n, name in enumerate(["c", "a", "b"]):
        ok(_create(client, dev, name, displayName=f"n{n}", acceleratorCount=1 + (n == 2)))
    listed = ok(client.get(f"{dev.base}?pageSize=2", headers=dev.headers))
    assert [d["name"].rsplit("/", 1)[1] for d in listed["deployments"]] == ["c", "a"]
    assert listed["totalSize"] == 3 and listed["nextPageToken"]
    rest = ok(
        client.get(
            f"{dev.base}?pageSize=2&pageToken={listed['nextPageToken']}", headers=dev.headers
        )
    )
    assert [d["name"].rsplit("/", 1)[1] for d in rest["deployments"]] == ["b"]
    assert rest["nextPageToken"] == ""
    ordered = ok(client.get(f"{dev.base}?orderBy=display_name desc", headers=dev.headers))
    assert [d["displayName"] for d in ordered["deployments"]] == ["n2", "n1", "n0"]
    filtered = ok(
        client.get(
            f'{dev.base}?filter=acceleratorCount = 2 OR display_name = "n0"', headers=dev.headers
        )
    )
    assert sorted(d["displayName"] for d in filtered["deployments"]) == ["n0", "n2"]
    for query, code in (
        ("filter=color = 1", "invalid_filter"),
        ('filter=state = "READY" AND', "invalid_filter"),
        ("orderBy=color", "invalid_order_by"),
        ("pageToken=zzz", "invalid_page_token"),
    ):
        response = client.get(f"{dev.base}?{query}", headers=dev.headers)
        assert response.json()["error"]["code"] == code, query


def test_another_account_sees_nothing(client: TestClient, dev: Member, ent: Member) -> None:
    ok(_create(client, dev, "mine"))
    assert client.get(f"{dev.base}/mine", headers=ent.headers).status_code == 404
    assert (
        client.get(
            f"{ent.base}/accounts%2Fdev-co%2Fdeployments%2Fmine", headers=ent.headers
        ).status_code
        == 404
    )
    assert client.delete(f"{dev.base}/mine", headers=ent.headers).status_code == 404


def test_suspension_runs_at_zero_and_restores(
    client: TestClient, services: Services, dev: Member
) -> None:
    ok(_create(client, dev, "z", minReplicaCount=1, maxReplicaCount=2))
    ok(_create(client, dev, "off"))
    ok(client.patch(f"{dev.base}/off:scale", json={"replicaCount": 0}, headers=dev.headers))
    control = services.deployments.control
    calls: list[int] = []
    services.deployments.on_change(lambda: calls.append(1))
    assert control.suspend_account("dev-co") == 2
    z = ok(client.get(f"{dev.base}/z", headers=dev.headers))
    assert (z["suspended"], z["desiredReplicaCount"]) == (True, 0)
    assert control.restore_account("dev-co") == 2
    z = ok(client.get(f"{dev.base}/z", headers=dev.headers))
    assert (z["suspended"], z["desiredReplicaCount"]) == (False, 1)
    off = ok(client.get(f"{dev.base}/off", headers=dev.headers))
    assert (off["desiredReplicaCount"], off["fixedReplicaCount"]) == (0, 0)  # the user's stays
    assert [e["kind"] for e in z["recentEvents"]][:2] == ["RESTORE", "SUSPEND"]
    assert len(calls) == 2


def test_observations_write_state_and_events(
    client: TestClient, services: Services, dev: Member, clock: FakeClock
) -> None:
    from firebox.deployments.control import Observed
    from firebox.deployments.models import DeploymentState

    ok(_create(client, dev, "o"))
    row = services.deployments.control.live()[0]
    ready = Observed(state=DeploymentState.READY, replica_count=1, ready_replicas=1)
    assert services.deployments.control.record(row.pk, ready)
    got = ok(client.get(f"{dev.base}/o", headers=dev.headers))
    assert (got["state"], got["replicaCount"]) == ("READY", 1)
    assert got["recentEvents"][0]["detail"] == "CREATING -> READY"
    renamed = ok(client.patch(f"{dev.base}/o", json={"displayName": "n"}, headers=dev.headers))
    assert renamed["state"] == "READY"  # names only: replicas stay as they are
    rolled = ok(client.patch(f"{dev.base}/o", json={"precision": "FP8"}, headers=dev.headers))
    assert rolled["state"] == "UPDATING"
    assert services.deployments.control.live()[0].revision == 2
    ok(client.delete(f"{dev.base}/o", headers=dev.headers))
    assert services.deployments.control.deleting()[0].pk == row.pk
    services.deployments.control.record(row.pk, Observed())
    shown = ok(client.get(f"{dev.base}?showDeleted=true", headers=dev.headers))
    assert shown["deployments"][0]["state"] == "DELETED"
    assert services.deployments.control.live() == []
    assert services.deployments.control.purge_expired() == 0  # kept until its purge time
    clock.advance(timedelta(days=8))
    assert services.deployments.control.purge_expired() == 1
    assert ok(client.get(f"{dev.base}?showDeleted=true", headers=dev.headers))["deployments"] == []


def test_created_or_undeleted_while_suspended_starts_at_zero(
    client: TestClient, services: Services, dev: Member, operator_headers: dict[str, str]
) -> None:
    ok(_create(client, dev, "old", minReplicaCount=1))
    ok(client.delete(f"{dev.base}/old", headers=dev.headers))
    block = f"/v1/accounts/{dev.account}:block"
    ok(client.post(block, json={"reason": "abuse"}, headers=operator_headers))
    made = ok(_create(client, dev, "late", minReplicaCount=1))
    assert (made["suspended"], made["desiredReplicaCount"]) == (True, 0)
    back = ok(client.post(f"{dev.base}/old:undelete", json={}, headers=dev.headers))
    assert (back["suspended"], back["desiredReplicaCount"]) == (True, 0)
    ok(client.post(f"/v1/accounts/{dev.account}:unblock", headers=operator_headers))
    # What the runtime's suspension hook does on unblock (then this finds nothing left).
    assert services.deployments.control.restore_account(dev.account) in (0, 2)
    for name in ("late", "old"):
        got = ok(client.get(f"{dev.base}/{name}", headers=dev.headers))
        assert (got["suspended"], got["desiredReplicaCount"]) == (False, 1), name
