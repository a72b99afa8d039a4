"""The unmodified ``fireworks-ai`` SDK drives deployments and shapes on a real server.

Also the quota race: 16 concurrent creates against an 8-GPU quota, through
the SDK over real HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import fireworks
import httpx
import pytest
from fireworks import Fireworks

from tests.conftest import OPERATOR_KEY
from tests.deployments.conftest import LORA, TINY
from tests.e2e.conftest import E2E_BACKENDS, drop_schema, pg_schema_url
from tests.support.api import bearer, create_account, member_key, ok
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=E2E_BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    data_dir: Path = tmp_path_factory.mktemp("firebox")
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_DEPLOYMENT_MIN_SCALE_TO_ZERO_S": "2",
        # The resource alone: no controller moves states or starts replicas under the asserts.
        "FIREBOX_DEPLOYMENT_CONTROLLER": "false",
    }
    schema = None
    if request.param == "postgresql":
        schema, env["FIREBOX_DATABASE_URL"] = pg_schema_url()
    running = start_server(data_dir, env=env)
    yield running
    running.stop()
    if schema:
        drop_schema(schema)


def _member(server: RunningServer, account: str, plan: str) -> Fireworks:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_account(http, bearer(OPERATOR_KEY), account, plan=plan)
        key = member_key(http, bearer(OPERATOR_KEY), account, "sam", "user")
    return Fireworks(api_key=key, base_url=server.url, account_id=account, max_retries=0)


def _usage(server: RunningServer, account: str, quota: str) -> int:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        got = ok(http.get(f"/v1/accounts/{account}/quotas/{quota}", headers=bearer(OPERATOR_KEY)))
    return int(got["usage"])


def test_sdk_drives_the_whole_lifecycle(server: RunningServer) -> None:
    fw = _member(server, "sdk-life", "BUSINESS")
    made = fw.deployments.create(
        base_model=TINY,
        deployment_id="chat",
        display_name="chat",
        accelerator_type="NVIDIA_A100_80GB",
        accelerator_count=1,
        min_replica_count=0,
        max_replica_count=2,
        autoscaling_policy={
            "scale_up_window": "30s",
            "scale_down_window": "10m",
            "scale_to_zero_window": "5s",
            "load_targets": {"default": 0.8},
        },
        enable_addons=True,
        placement={"region": "US_IOWA_1"},  # accepted and ignored
    )
    assert made.name == "accounts/sdk-life/deployments/chat"
    assert made.state == "CREATING"
    assert made.autoscaling_policy is not None
    assert made.autoscaling_policy.scale_down_window == "600s"
    assert made.autoscaling_policy.scale_to_zero_window == "5s"
    assert _usage(server, "sdk-life", "a100-gpus") == 2

    got = fw.deployments.get("chat")
    assert (got.base_model, got.max_replica_count, got.enable_addons) == (TINY, 2, True)
    assert fw.deployments.get("accounts/sdk-life/deployments/chat").name == made.name
    assert [d.name for d in fw.deployments.list()] == [made.name]

    updated = fw.deployments.update("chat", base_model=TINY, display_name="renamed")
    assert (updated.display_name, updated.max_replica_count) == ("renamed", 2)
    fw.deployments.scale("chat", replica_count=3)
    assert fw.deployments.get("chat").desired_replica_count == 3
    assert _usage(server, "sdk-life", "a100-gpus") == 3
    fw.deployments.scale("chat")  # no count: to zero
    assert fw.deployments.get("chat").desired_replica_count == 0

    fw.deployments.delete("chat")
    assert list(fw.deployments.list()) == []
    assert [d.state for d in fw.deployments.list(show_deleted=True)] == ["DELETING"]
    assert _usage(server, "sdk-life", "a100-gpus") == 0
    back = fw.deployments.undelete("chat", body={})
    assert back.state == "CREATING" and back.delete_time is None
    assert _usage(server, "sdk-life", "a100-gpus") == 2
    with pytest.raises(fireworks.ConflictError):
        fw.deployments.create(base_model=TINY, deployment_id="chat")
    fw.deployments.delete("chat", hard=True)
    with pytest.raises(fireworks.NotFoundError):
        fw.deployments.get("chat")
    assert _usage(server, "sdk-life", "a100-gpus") == 0
    assert _usage(server, "sdk-life", "deployed-models") == 0


def test_sdk_refuses_what_it_must(server: RunningServer) -> None:
    fw = _member(server, "sdk-dev", "DEVELOPER")
    with pytest.raises(fireworks.BadRequestError) as h100:
        fw.deployments.create(base_model=TINY, accelerator_type="NVIDIA_H100_80GB")
    assert "Enterprise" in str(h100.value)
    dry = fw.deployments.create(base_model=TINY, deployment_id="dry", validate_only=True)
    assert dry.name == "accounts/sdk-dev/deployments/dry"
    with pytest.raises(fireworks.NotFoundError):
        fw.deployments.get("dry")
    assert _usage(server, "sdk-dev", "a100-gpus") == 0
    with pytest.raises(fireworks.BadRequestError) as floor:
        fw.deployments.create(base_model=TINY, autoscaling_policy={"scale_to_zero_window": "1s"})
    assert "scaleToZeroWindow" in str(floor.value)
    other = _member(server, "sdk-other", "DEVELOPER")
    fw.deployments.create(base_model=TINY, deployment_id="private")
    with pytest.raises(fireworks.NotFoundError):
        other.deployments.get("accounts/sdk-dev/deployments/private", account_id="sdk-dev")


def test_sdk_shapes_and_match(server: RunningServer) -> None:
    fw = _member(server, "sdk-shapes", "BUSINESS")
    shapes = list(fw.deployment_shapes.list(account_id="firebox"))
    assert "accounts/firebox/deploymentShapes/firebox-tiny-minimal" in [s.name for s in shapes]
    match = fw.deployment_shape_versions.match_for_model(LORA, enable_addons=True)
    assert match.deployment_shape_versions
    version = match.deployment_shape_versions[0]
    assert version.snapshot is not None and version.snapshot.base_model == TINY
    made = fw.deployments.create(base_model=TINY, deployment_shape=str(version.name))
    assert made.deployment_shape == version.name
    assert (made.accelerator_type, made.precision) == ("NVIDIA_A100_80GB", "BF16")


def test_sixteen_concurrent_creates_never_overtake_the_quota(server: RunningServer) -> None:
    fw = _member(server, "sdk-race", "DEVELOPER")  # a100-gpus: 8
    barrier = threading.Barrier(16)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(n: int) -> None:
        barrier.wait()
        try:
            fw.deployments.create(base_model=TINY, deployment_id=f"r{n}", max_replica_count=1)
            outcome = "made"
        except fireworks.BadRequestError as exc:
            outcome = "quota" if "quota_exceeded" in str(exc) else repr(exc)
        except Exception as exc:  # pragma: no cover - reported in the assertion below
            outcome = repr(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["made"] * 8 + ["quota"] * 8, outcomes
    assert _usage(server, "sdk-race", "a100-gpus") == 8
    assert len(list(fw.deployments.list())) == 8
