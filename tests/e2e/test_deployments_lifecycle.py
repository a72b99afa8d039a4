"""An on-demand deployment's whole life on a real server, driven by the official clients.

The unmodified ``fireworks-ai`` SDK creates, loads an add-on onto, updates and
deletes it; the ``openai`` client calls it by all three names, streaming and
not. Between, load drives a second replica, idleness drives it to zero, a
request at zero wakes it, and its GPU time shows in the usage report, priced
at the A100's GPU-hour.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import fireworks
import httpx
import openai
import pytest
from fireworks import Fireworks

from tests.conftest import OPERATOR_KEY
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

T = TypeVar("T")
TINY = "accounts/firebox/models/firebox-tiny"
TINY_LORA = "accounts/firebox/models/firebox-tiny-lora"
ACCOUNT = "dep-co"
NAME = f"accounts/{ACCOUNT}/deployments/d1"
A100_MICROS_PER_HOUR = 3_890_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_DEPLOYMENT_MIN_SCALE_TO_ZERO_S": "1",
        "FIREBOX_DEPLOYMENT_METER_INTERVAL_S": "5",
        "FIREBOX_DEPLOYMENT_RECONCILE_INTERVAL_S": "0.2",
        "FIREBOX_DEPLOYMENT_TICK_S": "0.1",
        "FIREBOX_DEPLOYMENT_KV_CACHE_TOKENS": "4096",
        "FIREBOX_DEPLOYMENT_REPLICA_THREADS": "1",
    }
    running = start_server(Path(tmp_path_factory.mktemp("deployments")), env=env)
    yield running
    running.stop()


def until(check: Callable[[], T | None], what: str, timeout_s: float = 180.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def operator(server: RunningServer, method: str, path: str, **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def member_key(server: RunningServer, account: str) -> str:
    made = operator(server, "POST", "/v1/accounts", params={"accountId": account},
                    json={"displayName": account, "plan": "ENTERPRISE"})  # fmt: skip
    assert made.status_code == 200, made.text
    user = operator(server, "POST", f"/v1/accounts/{account}/users", params={"userId": "u"},
                    json={"role": "user", "email": f"u@{account}.example.com"})  # fmt: skip
    assert user.status_code == 200, user.text
    key = operator(server, "POST", f"/v1/accounts/{account}/users/u/apiKeys", json={"apiKey": {}})
    assert key.status_code == 200, key.text
    return str(key.json()["key"])


def say(client: openai.OpenAI, model: str, max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=max_tokens
    )
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    return answer.choices[0].message.content or ""


def test_deployment_lifecycle_with_the_official_clients(server: RunningServer) -> None:
    key = member_key(server, ACCOUNT)
    fw = Fireworks(api_key=key, base_url=server.url, account_id=ACCOUNT, max_retries=0)
    ai = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    started = time.monotonic()

    made = fw.deployments.create(
        base_model=TINY,
        deployment_id="d1",
        accelerator_type="NVIDIA_A100_80GB",
        accelerator_count=1,
        min_replica_count=0,
        max_replica_count=2,
        enable_addons=True,
        autoscaling_policy={
            "scale_up_window": "0s",
            "scale_down_window": "1s",
            "scale_to_zero_window": "2s",
            "load_targets": {"concurrent_requests": 1},
        },
    )
    assert made.name == NAME
    until(lambda: fw.deployments.get("d1").state == "READY", "READY")

    # All three names, streaming and not.
    say(ai, NAME)
    say(ai, f"{TINY}#{NAME}")
    chunks = list(
        ai.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
    )
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    placed = fw.lora.load(model=TINY_LORA, deployment=NAME, display_name="upper")
    assert placed.deployment == NAME and placed.name
    placed_id = placed.name.rpartition("/")[2]
    until(lambda: fw.lora.get(placed_id).state == "DEPLOYED", "the add-on DEPLOYED")
    until(lambda: _served(ai, placed.name or ""), "the add-on served on the deployment")
    say(ai, f"{TINY_LORA}#{NAME}")

    # Load drives a second replica (bursts of concurrent requests until it is seen).
    def two_ready() -> bool:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: say(ai, NAME, 64), range(4)))
        stats = fw.deployments.get("d1").replica_stats
        return bool(stats and (stats.ready_replica_count or 0) >= 2)

    until(two_ready, "a second replica under load")

    # Idle: to zero; a request at zero wakes it.
    until(lambda: (fw.deployments.get("d1").replica_count or 0) == 0, "scale to zero")
    say(ai, NAME)
    until(lambda: (fw.deployments.get("d1").replica_count or 0) >= 1, "woken")

    updated = fw.deployments.update("d1", base_model=TINY, display_name="renamed")
    assert updated.display_name == "renamed"

    # Another account cannot see or call it.
    other = openai.OpenAI(base_url=f"{server.url}/v1", api_key=member_key(server, "nosy"))
    with pytest.raises(openai.NotFoundError):
        say(other, NAME)

    fw.lora.unload(placed_id)
    fw.deployments.delete("d1")
    until(lambda: _deleted(server, key), "DELETED")
    elapsed = time.monotonic() - started

    quotas = httpx.get(f"{server.url}/v1/accounts/{ACCOUNT}/quotas",
                       headers={"Authorization": f"Bearer {key}"}, timeout=60).json()  # fmt: skip
    usage = {q["name"].rpartition("/")[2]: int(q["usage"] or 0) for q in quotas["quotas"]}
    assert usage["a100-gpus"] == 0 and usage["deployed-models"] == 0

    def billed() -> dict[str, object] | None:
        report = httpx.get(
            f"{server.url}/v1/accounts/{ACCOUNT}/usage",
            params={"groupBy": "deployment"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ).json()
        groups = {g["key"]: g for g in report["groups"]}
        group = groups.get(NAME)
        return group if group and group["gpuSeconds"] > 0 else None

    group = until(billed, "GPU time in the usage report")
    gpu_seconds = float(group["gpuSeconds"])  # type: ignore[arg-type]
    assert 0 < gpu_seconds <= elapsed * 2  # never more than 2 replicas for the whole test
    amount = round(float(group["amount"]) * 1_000_000)  # type: ignore[arg-type]
    expected = gpu_seconds * A100_MICROS_PER_HOUR / 3600
    assert abs(amount - expected) <= 1 + gpu_seconds  # each interval rounded on its own


def _served(client: openai.OpenAI, model: str) -> bool:
    try:
        return bool(say(client, model) is not None)
    except openai.NotFoundError:
        return False


def _deleted(server: RunningServer, key: str) -> bool:
    got = httpx.get(
        f"{server.url}/v1/accounts/{ACCOUNT}/deployments/d1",
        params={"showDeleted": "true"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    return got.status_code == 200 and got.json().get("state") == "DELETED"


_ = fireworks
