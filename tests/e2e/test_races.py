"""Every mutating control-plane route, fired N times at once at a real server, on each store.

Each case prepares its own account, then sends a burst of identical (or
deliberately conflicting) requests released by one barrier
(``tests.support.races``), and checks: no answer is a 5xx, the answers are
the ones the race allows (one winner, the rest 404/409/...), and every
invariant of docs/invariants.md holds in the store afterwards. On
PostgreSQL each request runs in its own transaction, so a missing lock or
a non-upserted first write shows as a 500 or a broken invariant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.e2e.conftest import E2E_BACKENDS, drop_schema, pg_schema_url
from tests.support.api import bearer, create_account, create_key, create_user, ok
from tests.support.races import Shot, fire, server_errors, snapshot, statuses, violations
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

N = 8  # requests per burst: enough to overlap on 2 cores, few enough to stay quick
OPERATOR = bearer(OPERATOR_KEY)
BASE = "accounts/firebox/models/race-base"


@dataclass
class Store:
    server: RunningServer
    db: Database
    http: httpx.Client


@pytest.fixture(scope="module", params=E2E_BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A real server with the test clock, and a handle on the store it writes."""
    data_dir: Path = tmp_path_factory.mktemp("races")
    env = {"FIREBOX_ADMIN_KEY": OPERATOR_KEY, "FIREBOX_TEST_CLOCK": "true"}
    env["FIREBOX_FINETUNE_MAX_JOBS"] = "0"  # fine-tuning jobs race on the API, never train
    schema = None
    if request.param == "postgresql":
        schema, env["FIREBOX_DATABASE_URL"] = pg_schema_url()
        db = Database(env["FIREBOX_DATABASE_URL"])
    else:
        db = Database(f"sqlite:///{(data_dir / 'firebox.db').resolve()}")
    running = start_server(data_dir, env=env)
    with httpx.Client(base_url=running.url, timeout=60) as http:
        # A served base (its upstream is never called: add-ons without an
        # upstreamAdapter load without telling the engine).
        ok(
            http.post(
                "/v1/accounts/firebox/models",
                json={
                    "modelId": "race-base",
                    "model": {
                        "kind": "HF_BASE_MODEL",
                        "contextLength": 4096,
                        "public": True,
                        "baseModelDetails": {"parameterCount": "8000000000"},
                        "engine": {
                            "type": "upstream",
                            "urls": ["http://127.0.0.1:9/v1"],
                            "upstreamModel": "base",
                        },
                    },
                },
                headers=OPERATOR,
            )
        )
        yield Store(running, db, http)
    running.stop()
    db.dispose()
    if schema:
        drop_schema(schema)


def addon_body() -> dict[str, Any]:
    return {
        "kind": "HF_PEFT_ADDON",
        "peftDetails": {"baseModel": BASE, "r": 8, "targetModules": ["q_proj"]},
    }


def addon_model(model_id: str) -> dict[str, Any]:
    """The body of a model create, as the SDK sends it."""
    return {"modelId": model_id, "model": addon_body()}


@dataclass
class Burst:
    """What a case fires, and the answers the race may give."""

    shots: list[Shot]
    allowed: set[int]
    check: Callable[[list[httpx.Response]], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def same(n: int, method: str, path: str, body: Any = None, headers: dict[str, str] = OPERATOR):
    return [Shot(method, path, headers, body)] * n


def one_winner(code: int = 200) -> Callable[[list[httpx.Response]], None]:
    def check(responses: list[httpx.Response]) -> None:
        assert statuses(responses)[code] == 1, statuses(responses)

    return check


# -- the cases: one per mutating route (several for the races of issue 15) ------------------


def account(http: httpx.Client, name: str, plan: str = "BUSINESS") -> str:
    create_account(http, OPERATOR, name, plan)
    return name


def with_deployed(http: httpx.Client, a: str, n: int = 3) -> list[str]:
    """``n`` add-ons of ``a`` loaded; their deployed model ids."""
    ids = []
    for i in range(n):
        ok(http.post(f"/v1/accounts/{a}/models", json=addon_model(f"lora-{i}"), headers=OPERATOR))
        loaded = ok(
            http.post(
                f"/v1/accounts/{a}/deployedModels",
                json={"model": f"accounts/{a}/models/lora-{i}"},
                headers=OPERATOR,
            )
        )
        ids.append(loaded["name"].rsplit("/", 1)[1])
    return ids


def case_create_account(http: httpx.Client, tag: str) -> Burst:
    return Burst(
        same(N, "POST", f"/v1/accounts?accountId=new-{tag}", {"plan": "BUSINESS"}),
        {200, 409},
        one_winner(),
    )


def case_patch_account(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pa-{tag}")
    return Burst(same(N, "PATCH", f"/v1/accounts/{a}", {"displayName": "Renamed"}), {200})


def case_create_same_user(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"cu-{tag}")
    return Burst(
        same(N, "POST", f"/v1/accounts/{a}/users?userId=alice", {"role": "admin"}),
        {200, 409},
        one_winner(),
    )


def case_developer_user_limit(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #2: distinct users on a Developer account (one allowed)."""
    a = account(http, f"dv-{tag}", plan="DEVELOPER")
    shots = [
        Shot("POST", f"/v1/accounts/{a}/users?userId=u{i}", OPERATOR, {"role": "admin"})
        for i in range(N)
    ]
    return Burst(shots, {200, 403}, one_winner())


def case_downgrade_racing_user_creates(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #2: a downgrade to Developer racing user creates."""
    a = account(http, f"dg-{tag}")
    create_user(http, OPERATOR, a, "owner", "admin")
    shots = [Shot("PATCH", f"/v1/accounts/{a}", OPERATOR, {"plan": "DEVELOPER"})]
    shots += [
        Shot("POST", f"/v1/accounts/{a}/users?userId=u{i}", OPERATOR, {"role": "user"})
        for i in range(N - 1)
    ]
    return Burst(shots, {200, 400, 403})


def case_admins_demote_each_other(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #3: two admins, each demoting the other, several times over."""
    a = account(http, f"ad-{tag}")
    keys = {}
    for user in ("ann", "bob"):
        create_user(http, OPERATOR, a, user, "admin")
        keys[user] = bearer(str(create_key(http, OPERATOR, a, user)["key"]))
    shots = []
    for i in range(N):
        actor, target = ("ann", "bob") if i % 2 else ("bob", "ann")
        shots.append(
            Shot("PATCH", f"/v1/accounts/{a}/users/{target}", keys[actor], {"role": "user"})
        )
    return Burst(shots, {200, 400, 401, 403})


def case_patch_user(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pu-{tag}")
    create_user(http, OPERATOR, a, "carl", "admin")
    create_user(http, OPERATOR, a, "dora", "admin")
    return Burst(same(N, "PATCH", f"/v1/accounts/{a}/users/carl", {"role": "user"}), {200, 400})


def case_create_api_key(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"ck-{tag}")
    create_user(http, OPERATOR, a, "eve", "admin")
    return Burst(same(N, "POST", f"/v1/accounts/{a}/users/eve/apiKeys", {"apiKey": {}}), {200})


def case_delete_api_key(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"dk-{tag}")
    create_user(http, OPERATOR, a, "fay", "admin")
    key_id = create_key(http, OPERATOR, a, "fay")["keyId"]
    path = f"/v1/accounts/{a}/users/fay/apiKeys:delete"
    return Burst(same(N, "POST", path, {"keyId": key_id}), {200, 404})


def case_create_model(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"cm-{tag}")
    path = f"/v1/accounts/{a}/models"
    return Burst(same(N, "POST", path, addon_model("lora")), {200, 409}, one_winner())


def case_edit_and_delete_model(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #5: edits and deletes of one model, at once."""
    a = account(http, f"em-{tag}")
    ok(http.post(f"/v1/accounts/{a}/models", json=addon_model("lora"), headers=OPERATOR))
    path = f"/v1/accounts/{a}/models/lora"
    shots = [
        Shot("DELETE", path, OPERATOR)
        if i % 2
        else Shot("PATCH", path, OPERATOR, {"description": f"v{i}"})
        for i in range(N)
    ]
    return Burst(shots, {200, 404, 409})


def case_delete_model(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"dm-{tag}")
    ok(http.post(f"/v1/accounts/{a}/models", json=addon_model("lora"), headers=OPERATOR))
    return Burst(same(N, "DELETE", f"/v1/accounts/{a}/models/lora"), {200, 404, 409}, one_winner())


def case_load_addon(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"ld-{tag}")
    ok(http.post(f"/v1/accounts/{a}/models", json=addon_model("lora"), headers=OPERATOR))
    body = {"model": f"accounts/{a}/models/lora"}
    return Burst(
        same(N, "POST", f"/v1/accounts/{a}/deployedModels", body), {200, 409}, one_winner()
    )


def case_upload_endpoint(http: httpx.Client, tag: str) -> Burst:
    """Model uploads: one file set registered by every request at once."""
    a = account(http, f"up-{tag}")
    ok(http.post(f"/v1/accounts/{a}/models", json=addon_model("lora"), headers=OPERATOR))
    body = {"filenameToSize": {"adapter_config.json": "10", "adapter_model.safetensors": "99"}}
    return Burst(same(N, "POST", f"/v1/accounts/{a}/models/lora:getUploadEndpoint", body), {200})


def case_prepare_model(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pm-{tag}")
    ok(http.post(f"/v1/accounts/{a}/models", json=addon_model("lora"), headers=OPERATOR))
    return Burst(same(N, "POST", f"/v1/accounts/{a}/models/lora:prepare", {}), {200})


def case_unload_addon(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #1: the same deployed model unloaded by every request of the burst."""
    a = account(http, f"ul-{tag}")
    ids = with_deployed(http, a)
    path = f"/v1/accounts/{a}/deployedModels/{ids[0]}"
    return Burst(same(N, "DELETE", path), {200, 404}, one_winner())


def case_edit_and_unload_addon(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #5: edits and unloads of one deployed model, at once."""
    a = account(http, f"eu-{tag}")
    ids = with_deployed(http, a, 2)
    path = f"/v1/accounts/{a}/deployedModels/{ids[0]}"
    shots = [
        Shot("DELETE", path, OPERATOR)
        if i % 2
        else Shot("PATCH", path, OPERATOR, {"description": f"v{i}"})
        for i in range(N)
    ]
    return Burst(shots, {200, 404, 409})


def case_patch_billing(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pb-{tag}")
    return Burst(
        same(N, "PATCH", f"/v1/accounts/{a}/billing", {"accountSpendLimit": "50.00"}), {200}
    )


def case_add_payment_method(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pm-{tag}")
    body = {"paymentMethod": "pm_card_visa"}
    return Burst(same(N, "POST", f"/v1/accounts/{a}/paymentMethods", body), {200})


def _card(http: httpx.Client, a: str) -> str:
    added = ok(
        http.post(
            f"/v1/accounts/{a}/paymentMethods",
            json={"paymentMethod": "pm_card_visa"},
            headers=OPERATOR,
        )
    )
    return str(added["name"]).rsplit("/", 1)[1]


def case_delete_payment_method(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"dp-{tag}")
    card = _card(http, a)
    return Burst(same(N, "DELETE", f"/v1/accounts/{a}/paymentMethods/{card}"), {200, 404})


def case_delete_payment_method_verb(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"dv2-{tag}")
    card = _card(http, a)
    return Burst(same(N, "POST", f"/v1/accounts/{a}/paymentMethods/{card}:delete"), {200, 404})


def case_purchase_credits(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pc-{tag}")
    _card(http, a)
    body = {"amount": "10.00", "idempotencyKey": "once"}
    return Burst(same(N, "POST", f"/v1/accounts/{a}/credits:purchase", body), {200, 409})


def case_grant_credits(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"gc-{tag}")
    body = {"amount": "5.00", "reason": "race"}
    return Burst(same(N, "POST", f"/v1/accounts/{a}/credits:grant", body), {200})


def case_pay_invoice(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pi-{tag}")
    return Burst(same(N, "POST", f"/v1/accounts/{a}/invoices/none:pay"), {404})


def case_advance_test_clock(http: httpx.Client, tag: str) -> Burst:
    now = ok(http.get("/v1/admin/testClock", headers=OPERATOR))["now"]
    to = f"{int(now[:4]) + 0}-{now[5:7]}-{now[8:10]}T23:59:59Z"
    return Burst(same(N, "POST", "/v1/admin/testClock:advance", {"to": to}), {200, 400})


def case_close_period(http: httpx.Client, tag: str) -> Burst:
    return Burst(same(N, "POST", "/v1/admin/billing:closePeriod", {"period": "2026-01"}), {200})


def case_patch_quota(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"pq-{tag}")
    return Burst(same(N, "PATCH", f"/v1/accounts/{a}/quotas/a100-gpus", {"value": 4}), {200})


def case_first_limits_write(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #4: the account's limits written for the first time by every request."""
    a = account(http, f"fl-{tag}")
    body = {"rateLimitRequestsPerMinute": 900}
    return Burst(same(N, "PATCH", f"/v1/accounts/{a}/limits", body), {200})


def case_first_rpm_quota_write(http: httpx.Client, tag: str) -> Burst:
    """Issue 15 #4, through the quota that is the rate limit."""
    a = account(http, f"fq-{tag}")
    path = f"/v1/accounts/{a}/quotas/serverless-requests-per-minute"
    return Burst(same(N, "PATCH", path, {"value": 700}), {200})


def case_block(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"bl-{tag}")
    return Burst(same(N, "POST", f"/v1/accounts/{a}:block", {"reason": "race"}), {200})


def case_unblock(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"ub-{tag}")
    ok(http.post(f"/v1/accounts/{a}:block", json={"reason": "race"}, headers=OPERATOR))
    return Burst(same(N, "POST", f"/v1/accounts/{a}:unblock"), {200})


def _deployment(http: httpx.Client, a: str, dep: str, **body: Any) -> str:
    path = f"/v1/accounts/{a}/deployments"
    ok(http.post(f"{path}?deploymentId={dep}", json={"baseModel": BASE, **body}, headers=OPERATOR))
    return f"{path}/{dep}"


def case_create_same_deployment(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"cd-{tag}")
    path = f"/v1/accounts/{a}/deployments?deploymentId=web"
    return Burst(same(N, "POST", path, {"baseModel": BASE}), {200, 409}, one_winner())


def case_deployments_race_for_the_last_gpus(http: httpx.Client, tag: str) -> Burst:
    """Issue 16: distinct creates against an 8-GPU quota, 2 GPUs each (four fit)."""
    a = account(http, f"cg-{tag}", plan="DEVELOPER")
    shots = [
        Shot(
            "POST",
            f"/v1/accounts/{a}/deployments?deploymentId=d{i}",
            OPERATOR,
            {"baseModel": BASE, "acceleratorCount": 2},
        )
        for i in range(N)
    ]
    return Burst(shots, {200, 400}, lambda rs: _exactly(rs, 200, 4))


def _exactly(responses: list[httpx.Response], code: int, n: int) -> None:
    assert statuses(responses)[code] == n, statuses(responses)


def case_scale_deployment(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"sd-{tag}")
    path = _deployment(http, a, "web") + ":scale"
    shots = [Shot("PATCH", path, OPERATOR, {"replicaCount": i * 2}) for i in range(N)]
    return Burst(shots, {200, 400})  # 8 and more GPUs: over the quota


def case_edit_and_delete_deployment(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"ed-{tag}")
    path = _deployment(http, a, "web")
    shots = [
        Shot("DELETE", path, OPERATOR)
        if i % 2
        else Shot("PATCH", path, OPERATOR, {"maxReplicaCount": i + 1})
        for i in range(N)
    ]
    return Burst(shots, {200, 400, 404})


def case_delete_deployment(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"dd-{tag}")
    path = _deployment(http, a, "web", maxReplicaCount=2)
    return Burst(same(N, "DELETE", path), {200, 404}, one_winner())


def case_undelete_deployment(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"ud-{tag}")
    path = _deployment(http, a, "web", maxReplicaCount=2)
    ok(http.delete(path, headers=OPERATOR))
    return Burst(same(N, "POST", f"{path}:undelete", {}), {200, 400}, one_winner())


def case_write_shape(http: httpx.Client, tag: str) -> Burst:
    path = f"/v1/accounts/firebox/deploymentShapes?deploymentShapeId=s-{tag.lower()[:40]}"
    body = {"baseModel": BASE, "acceleratorCount": 2}
    return Burst(same(N, "POST", path, body), {200, 409}, one_winner())


def case_patch_and_delete_shape(http: httpx.Client, tag: str) -> Burst:
    shape = f"p-{tag.lower()[:40]}"
    ok(
        http.post(
            f"/v1/accounts/firebox/deploymentShapes?deploymentShapeId={shape}",
            json={"baseModel": BASE},
            headers=OPERATOR,
        )
    )
    path = f"/v1/accounts/firebox/deploymentShapes/{shape}"
    shots = [
        Shot("DELETE", path, OPERATOR)
        if i % 2
        else Shot("PATCH", path, OPERATOR, {"acceleratorCount": i + 1})
        for i in range(N)
    ]
    return Burst(shots, {200, 404})


def case_match_shapes(http: httpx.Client, tag: str) -> Burst:
    body = {"createDeploymentRequest": {"deployment": {"baseModel": BASE}}}
    return Burst(same(N, "POST", "/v1/accounts/firebox/deploymentShapeVersions:match", body), {200})


DATASET_LINE = (
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


def with_dataset(http: httpx.Client, tag: str) -> tuple[str, str]:
    """An account and an empty dataset ``ds`` in it: (account, dataset path)."""
    a = account(http, tag)
    ok(http.post(f"/v1/accounts/{a}/datasets", json={"datasetId": "ds"}, headers=OPERATOR))
    return a, f"/v1/accounts/{a}/datasets/ds"


def case_create_dataset(http: httpx.Client, tag: str) -> Burst:
    a = account(http, f"cd-{tag}")
    shots = same(N, "POST", f"/v1/accounts/{a}/datasets", {"datasetId": "ds"})
    return Burst(shots, {200, 409}, one_winner())


def case_patch_dataset(http: httpx.Client, tag: str) -> Burst:
    _, path = with_dataset(http, f"pd-{tag}")
    return Burst(same(N, "PATCH", path, {"displayName": "Renamed"}), {200})


def case_delete_dataset(http: httpx.Client, tag: str) -> Burst:
    _, path = with_dataset(http, f"dd-{tag}")
    return Burst(same(N, "DELETE", path), {200, 404}, one_winner())


def case_upload_dataset(http: httpx.Client, tag: str) -> Burst:
    """Concurrent uploads of one dataset: one is validated into READY, the rest refused."""
    _, path = with_dataset(http, f"ud-{tag}")
    shot = Shot("POST", f"{path}:upload", OPERATOR, files={"file": ("t.jsonl", DATASET_LINE)})

    def check(responses: list[httpx.Response]) -> None:
        assert statuses(responses)[200] >= 1, statuses(responses)
        assert ok(http.get(path, headers=OPERATOR))["state"] == "READY"

    return Burst([shot] * N, {200, 400, 409}, check)


def case_dataset_upload_endpoint(http: httpx.Client, tag: str) -> Burst:
    _, path = with_dataset(http, f"ue-{tag}")
    body = {"filenameToSize": {"t.jsonl": str(len(DATASET_LINE))}}
    return Burst(same(N, "POST", f"{path}:getUploadEndpoint", body), {200})


def case_validate_upload(http: httpx.Client, tag: str) -> Burst:
    _, path = with_dataset(http, f"vu-{tag}")
    body = {"filenameToSize": {"t.jsonl": str(len(DATASET_LINE))}}
    url = ok(http.post(f"{path}:getUploadEndpoint", json=body, headers=OPERATOR))[
        "filenameToSignedUrls"
    ]["t.jsonl"]
    assert httpx.put(url, content=DATASET_LINE, timeout=60).status_code == 200
    return Burst(same(N, "POST", f"{path}:validateUpload", {}), {200})


SFT_BASE = "accounts/firebox/models/firebox-tiny"


def with_sft_job(http: httpx.Client, tag: str, *, cancelled: bool = False) -> str:
    """An account with a READY dataset and a job ``j`` on it (not training): the job's path."""
    a, dataset = with_dataset(http, tag)
    files = {"file": ("t.jsonl", DATASET_LINE)}
    ok(http.post(f"{dataset}:upload", files=files, headers=OPERATOR))
    jobs = f"/v1/accounts/{a}/supervisedFineTuningJobs"
    body = {"dataset": f"accounts/{a}/datasets/ds", "baseModel": SFT_BASE}
    ok(http.post(f"{jobs}?supervisedFineTuningJobId=j", json=body, headers=OPERATOR))
    if cancelled:
        ok(http.post(f"{jobs}/j:cancel", json={}, headers=OPERATOR))
    return f"{jobs}/j"


def case_create_sftj(http: httpx.Client, tag: str) -> Burst:
    path = with_sft_job(http, f"cs-{tag}")
    jobs = path.removesuffix("/j")
    body = {"dataset": f"accounts/cs-{tag}/datasets/ds", "baseModel": SFT_BASE, "outputModel": "o"}
    shots = same(N, "POST", f"{jobs}?supervisedFineTuningJobId=k", body)
    return Burst(shots, {200, 409}, one_winner())


def case_cancel_sftj(http: httpx.Client, tag: str) -> Burst:
    path = with_sft_job(http, f"xs-{tag}")

    def check(responses: list[httpx.Response]) -> None:
        assert statuses(responses)[200] == 1, statuses(responses)  # the rest: job_finished
        assert ok(http.get(path, headers=OPERATOR))["state"] == "JOB_STATE_CANCELLED"

    return Burst(same(N, "POST", f"{path}:cancel", {}), {200, 400}, check)


def case_resume_sftj(http: httpx.Client, tag: str) -> Burst:
    path = with_sft_job(http, f"rs-{tag}", cancelled=True)

    def check(responses: list[httpx.Response]) -> None:
        assert ok(http.get(path, headers=OPERATOR))["state"] == "JOB_STATE_PENDING"

    return Burst(same(N, "POST", f"{path}:resume", {}), {200}, check)


def case_delete_sftj(http: httpx.Client, tag: str) -> Burst:
    path = with_sft_job(http, f"ds-{tag}")
    return Burst(same(N, "DELETE", path), {200, 404}, one_winner())


BATCH_LINE = (
    '{"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}],'
    ' "max_tokens": 2}}\n'
)


def with_batch_input(http: httpx.Client, tag: str) -> str:
    """An account with a READY dataset ``in`` of one batch line: the account."""
    a = account(http, tag)
    datasets = f"/v1/accounts/{a}/datasets"
    ok(http.post(datasets, json={"datasetId": "in"}, headers=OPERATOR))
    files = {"file": ("in.jsonl", BATCH_LINE)}
    ok(http.post(f"{datasets}/in:upload", files=files, headers=OPERATOR))
    return a


def case_create_batch_job(http: httpx.Client, tag: str) -> Burst:
    a = with_batch_input(http, f"cb-{tag}")
    body = {"model": BASE, "inputDatasetId": f"accounts/{a}/datasets/in"}
    path = f"/v1/accounts/{a}/batchInferenceJobs?batchInferenceJobId=job"
    return Burst(same(N, "POST", path, body), {200, 409}, one_winner())


def case_delete_batch_job(http: httpx.Client, tag: str) -> Burst:
    a = with_batch_input(http, f"db-{tag}")
    jobs = f"/v1/accounts/{a}/batchInferenceJobs"
    body = {"model": BASE, "inputDatasetId": f"accounts/{a}/datasets/in"}
    ok(http.post(f"{jobs}?batchInferenceJobId=job", json=body, headers=OPERATOR))

    def check(responses: list[httpx.Response]) -> None:
        assert statuses(responses)[200] == 1, statuses(responses)
        assert http.get(f"{jobs}/job", headers=OPERATOR).status_code == 404

    return Burst(same(N, "DELETE", f"{jobs}/job"), {200, 404}, check)


def tenant(http: httpx.Client, tag: str) -> dict[str, str]:
    """A new account's admin key, for the OpenAI-shaped routes (they act for the key's account)."""
    a = account(http, tag)
    create_user(http, OPERATOR, a, "ann", "admin")
    return bearer(str(create_key(http, OPERATOR, a, "ann")["key"]))


def _batch_file(http: httpx.Client, key: dict[str, str]) -> str:
    files = {"file": ("in.jsonl", BATCH_LINE)}
    return str(
        ok(http.post("/v1/files", data={"purpose": "batch"}, files=files, headers=key))["id"]
    )


def case_upload_batch_file(http: httpx.Client, tag: str) -> Burst:
    key = tenant(http, f"uf-{tag}")
    shot = Shot(
        "POST",
        "/v1/files",
        key,
        files={"file": ("in.jsonl", BATCH_LINE)},
        data={"purpose": "batch"},
    )

    def check(responses: list[httpx.Response]) -> None:
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == N, ids  # every upload is its own file
        listed = ok(http.get("/v1/files", headers=key))["data"]
        assert {f["id"] for f in listed} >= ids

    return Burst([shot] * N, {200}, check)


def case_delete_batch_file(http: httpx.Client, tag: str) -> Burst:
    key = tenant(http, f"df-{tag}")
    file_id = _batch_file(http, key)

    def check(responses: list[httpx.Response]) -> None:
        assert http.get(f"/v1/files/{file_id}", headers=key).status_code == 404

    return Burst([Shot("DELETE", f"/v1/files/{file_id}", key)] * N, {200, 404}, check)


def case_create_openai_batch(http: httpx.Client, tag: str) -> Burst:
    key = tenant(http, f"ob-{tag}")
    body = {
        "input_file_id": _batch_file(http, key),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }

    def check(responses: list[httpx.Response]) -> None:
        assert len({r.json()["id"] for r in responses}) == N  # one batch each

    return Burst([Shot("POST", "/v1/batches", key, body)] * N, {200}, check)


def case_cancel_openai_batch(http: httpx.Client, tag: str) -> Burst:
    key = tenant(http, f"cb-{tag}")
    body = {
        "input_file_id": _batch_file(http, key),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch_id = ok(http.post("/v1/batches", json=body, headers=key))["id"]

    def check(responses: list[httpx.Response]) -> None:
        final = ok(http.get(f"/v1/batches/{batch_id}", headers=key))["status"]
        assert final in ("cancelling", "cancelled", "completed", "failed"), final

    return Burst([Shot("POST", f"/v1/batches/{batch_id}/cancel", key)] * N, {200}, check)


CASES: dict[str, Callable[[httpx.Client, str], Burst]] = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_burst_keeps_the_invariants(store: Store, name: str) -> None:
    burst = CASES[name](store.http, name.replace("_", "")[:20])
    before = snapshot(store.db)
    already = set(violations(store.db, before))  # none, unless an earlier case broke one
    responses = fire(store.server.url, burst.shots)
    assert server_errors(responses) == [], store.server.log()[-3000:]
    unexpected = [
        f"{r.status_code} {r.text}" for r in responses if r.status_code not in burst.allowed
    ]
    assert unexpected == []
    if burst.check is not None:
        burst.check(responses)
    assert sorted(set(violations(store.db, before)) - already) == []


# -- the mutating routes the cases cover: a new route needs a case --------------------------

MUTATING_ROUTES = {
    ("POST", "/v1/accounts"): "create_account",
    ("PATCH", "/v1/accounts/{account}"): "patch_account",
    ("POST", "/v1/accounts/{account}/users"): "developer_user_limit",
    ("PATCH", "/v1/accounts/{account}/users/{user}"): "admins_demote_each_other",
    ("POST", "/v1/accounts/{account}/users/{user}/apiKeys"): "create_api_key",
    ("POST", "/v1/accounts/{account}/users/{user}/apiKeys:delete"): "delete_api_key",
    ("POST", "/v1/accounts/{account}/models"): "create_model",
    ("PATCH", "/v1/accounts/{account}/models/{model}"): "edit_and_delete_model",
    ("DELETE", "/v1/accounts/{account}/models/{model}"): "delete_model",
    ("POST", "/v1/accounts/{account}/models/{model}:getUploadEndpoint"): "upload_endpoint",
    ("POST", "/v1/accounts/{account}/models/{model}:prepare"): "prepare_model",
    ("POST", "/v1/accounts/{account}/deployedModels"): "load_addon",
    ("PATCH", "/v1/accounts/{account}/deployedModels/{deployed_model}"): "edit_and_unload_addon",
    ("DELETE", "/v1/accounts/{account}/deployedModels/{deployed_model}"): "unload_addon",
    ("PATCH", "/v1/accounts/{account}/billing"): "patch_billing",
    ("POST", "/v1/accounts/{account}/paymentMethods"): "add_payment_method",
    ("DELETE", "/v1/accounts/{account}/paymentMethods/{method}"): "delete_payment_method",
    ("POST", "/v1/accounts/{account}/paymentMethods/{method}:delete"): "delete_payment_method_verb",
    ("POST", "/v1/accounts/{account}/credits:purchase"): "purchase_credits",
    ("POST", "/v1/accounts/{account}/credits:grant"): "grant_credits",
    ("POST", "/v1/accounts/{account}/invoices/{invoice}:pay"): "pay_invoice",
    ("POST", "/v1/admin/testClock:advance"): "advance_test_clock",
    ("POST", "/v1/admin/billing:closePeriod"): "close_period",
    ("PATCH", "/v1/accounts/{account}/quotas/{quota_id}"): "patch_quota",
    ("PATCH", "/v1/accounts/{account}/limits"): "first_limits_write",
    ("POST", "/v1/accounts/{account}:block"): "block",
    ("POST", "/v1/accounts/{account}:unblock"): "unblock",
    ("POST", "/v1/accounts/{account}/deployments"): "deployments_race_for_the_last_gpus",
    ("PATCH", "/v1/accounts/{account}/deployments/{deployment}"): "edit_and_delete_deployment",
    ("DELETE", "/v1/accounts/{account}/deployments/{deployment}"): "delete_deployment",
    ("PATCH", "/v1/accounts/{account}/deployments/{deployment}:scale"): "scale_deployment",
    ("POST", "/v1/accounts/{account}/deployments/{deployment}:undelete"): "undelete_deployment",
    ("POST", "/v1/accounts/{account}/deploymentShapes"): "write_shape",
    ("PATCH", "/v1/accounts/{account}/deploymentShapes/{shape}"): "patch_and_delete_shape",
    ("DELETE", "/v1/accounts/{account}/deploymentShapes/{shape}"): "patch_and_delete_shape",
    ("POST", "/v1/accounts/{account}/deploymentShapeVersions:match"): "match_shapes",
    ("POST", "/v1/accounts/{account}/datasets"): "create_dataset",
    ("PATCH", "/v1/accounts/{account}/datasets/{dataset}"): "patch_dataset",
    ("DELETE", "/v1/accounts/{account}/datasets/{dataset}"): "delete_dataset",
    ("POST", "/v1/accounts/{account}/datasets/{dataset}:upload"): "upload_dataset",
    (
        "POST",
        "/v1/accounts/{account}/datasets/{dataset}:getUploadEndpoint",
    ): "dataset_upload_endpoint",
    ("POST", "/v1/accounts/{account}/datasets/{dataset}:validateUpload"): "validate_upload",
    ("POST", "/v1/accounts/{account}/batchInferenceJobs"): "create_batch_job",
    ("DELETE", "/v1/accounts/{account}/batchInferenceJobs/{job_id}"): "delete_batch_job",
    ("POST", "/v1/files"): "upload_batch_file",
    ("DELETE", "/v1/files/{file_id}"): "delete_batch_file",
    ("POST", "/v1/batches"): "create_openai_batch",
    ("POST", "/v1/batches/{batch_id}/cancel"): "cancel_openai_batch",
    ("POST", "/v1/accounts/{account}/supervisedFineTuningJobs"): "create_sftj",
    ("DELETE", "/v1/accounts/{account}/supervisedFineTuningJobs/{job}"): "delete_sftj",
    ("POST", "/v1/accounts/{account}/supervisedFineTuningJobs/{job}:cancel"): "cancel_sftj",
    ("POST", "/v1/accounts/{account}/supervisedFineTuningJobs/{job}:resume"): "resume_sftj",
}


def test_every_mutating_route_has_a_burst(store: Store) -> None:
    schema = ok(store.http.get("/openapi.json"))
    mutating = {
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        for method in ops
        if method in ("post", "patch", "put", "delete")
        and "/inference/" not in path
        and path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    }
    assert mutating == set(MUTATING_ROUTES)
    assert set(MUTATING_ROUTES.values()) <= set(CASES)
