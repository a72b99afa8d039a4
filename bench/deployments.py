"""On-demand deployments: cold start from zero, time to scale to zero, the gateway's added latency.

For each driver (``--drivers``, default ``local``; ``ray_serve`` starts a
single-node Ray cluster on free loopback ports and stops it after), one
``firebox serve`` on loopback with short deployment loops, the bundled
``firebox-tiny`` model, and an account ``bench`` (a member's key):

- cold start: a deployment at zero (``minReplicaCount`` 0, scale to zero
  after ``--idle-s``) gets a streaming chat request; the time to its first
  content chunk is the cold start (replica start + first token), measured
  ``--cold`` times, each after the deployment was seen at zero again;
- time to zero: from the end of that request until the deployment reports
  0 replicas (it includes the ``--idle-s`` window, printed beside it);
- added latency: ``--requests`` one-token chat requests alternately to the
  serverless model and to a warm deployment (``minReplicaCount`` 1) of the
  same model, on the same engine code; the medians' difference is what the
  deployment path adds (the local driver: one more engine instance and the
  deployment lookup; Ray Serve: the hop through the Serve proxy).

``--record`` writes the figures into the Deployments section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _procs import Server, free_port, start

ROOT = Path(__file__).resolve().parent.parent
TINY = "accounts/firebox/models/firebox-tiny"
ACCOUNT = "bench"
HEADING = "## Deployments"


@dataclass
class Figures:
    driver: str
    cold_s: list[float] = field(default_factory=list)
    to_zero_s: list[float] = field(default_factory=list)
    serverless_ms: list[float] = field(default_factory=list)
    deployment_ms: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", default="local", help="local,ray_serve")
    parser.add_argument("--cold", type=int, default=3, help="cold starts to measure")
    parser.add_argument("--idle-s", type=float, default=2.0, help="scaleToZeroWindow")
    parser.add_argument("--requests", type=int, default=40, help="latency requests per path")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    return parser.parse_args(argv)


def until(check: Callable[[], Any], what: str, timeout_s: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def ray_env(driver: str, work: Path) -> Iterator[dict[str, str]]:
    if driver != "ray_serve":
        yield {}
        return
    sys.path.insert(0, str(ROOT))
    from tests.support.ray_cluster import ray_cluster

    with ray_cluster(log_dir=work) as cluster:
        yield {
            "FIREBOX_DEPLOYMENT_DRIVER": "ray_serve",
            "FIREBOX_RAY_DASHBOARD_URL": cluster.dashboard_url,
            "FIREBOX_RAY_SERVE_URL": cluster.serve_url,
            "FIREBOX_RAY_SERVE_HOST": "127.0.0.1",
            "FIREBOX_RAY_SERVE_PORT": str(cluster.serve_port),
            "FIREBOX_DEPLOYMENT_WAKE_TIMEOUT_S": "300",
        }


@contextlib.contextmanager
def firebox(driver: str, work: Path, admin: str) -> Iterator[Server]:
    with ray_env(driver, work) as extra:
        port = free_port()
        env = {
            **os.environ,
            "FIREBOX_ADMIN_KEY": admin,
            "FIREBOX_ACCESS_LOG": "false",
            "FIREBOX_WARM_LOCAL_ENGINES": "false",
            "FIREBOX_DEPLOYMENT_MIN_SCALE_TO_ZERO_S": "1",
            "FIREBOX_DEPLOYMENT_RECONCILE_INTERVAL_S": "0.2",
            "FIREBOX_DEPLOYMENT_TICK_S": "0.1",
            "FIREBOX_DEPLOYMENT_KV_CACHE_TOKENS": "4096",
            "FIREBOX_DEPLOYMENT_REPLICA_THREADS": "1",
            **extra,
        }
        argv = [str(Path(sys.executable).parent / "firebox"), "serve", "--host", "127.0.0.1",
                "--port", str(port), "--data-dir", str(work / f"data-{driver}")]  # fmt: skip
        server = start(f"firebox-{driver}", argv, url=f"http://127.0.0.1:{port}",
                       health_path="/healthz", log_dir=work, env=env, timeout_s=120)  # fmt: skip
        try:
            yield server
        finally:
            server.stop(grace_s=30)


def setup_account(api: httpx.Client, admin: str) -> str:
    op = {"Authorization": f"Bearer {admin}"}
    for method, path, body, params in (
        ("POST", "/v1/accounts", {"displayName": "Bench", "plan": "ENTERPRISE"},
         {"accountId": ACCOUNT}),
        ("POST", f"/v1/accounts/{ACCOUNT}/users", {"role": "user", "email": "u@bench.example"},
         {"userId": "u"}),
    ):  # fmt: skip
        api.request(method, path, json=body, params=params, headers=op).raise_for_status()
    api.patch(f"/v1/accounts/{ACCOUNT}/billing", json={"unlimited": True},
              headers=op).raise_for_status()  # fmt: skip
    key = api.post(f"/v1/accounts/{ACCOUNT}/users/u/apiKeys", json={"apiKey": {}}, headers=op)
    key.raise_for_status()
    return str(key.json()["key"])


def create(api: httpx.Client, deployment_id: str, minimum: int, idle_s: float) -> str:
    body = {
        "baseModel": TINY,
        "acceleratorType": "NVIDIA_A100_80GB",
        "acceleratorCount": 1,
        "minReplicaCount": minimum,
        "maxReplicaCount": 1,
        "autoscalingPolicy": {"scaleUpWindow": "0s", "scaleDownWindow": "1s",
                              "scaleToZeroWindow": f"{idle_s:g}s"},
    }  # fmt: skip
    made = api.post(f"/v1/accounts/{ACCOUNT}/deployments", params={"deploymentId": deployment_id},
                    json=body)  # fmt: skip
    made.raise_for_status()
    return str(made.json()["name"])


def get(api: httpx.Client, name: str) -> dict[str, Any]:
    got = api.get(f"/v1/{name}")
    got.raise_for_status()
    return dict(got.json())


def chat(api: httpx.Client, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    started = time.perf_counter()
    answer = api.post("/v1/chat/completions", json=body)
    answer.raise_for_status()
    return (time.perf_counter() - started) * 1000


def first_token_s(api: httpx.Client, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 8, "stream": True}  # fmt: skip
    started = time.perf_counter()
    first = None
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    first = time.perf_counter() - started
    assert first is not None, "no content chunk"
    return first


def run_driver(driver: str, args: argparse.Namespace, work: Path) -> Figures:
    admin = "fb_bench_" + secrets.token_hex(24)
    figures = Figures(driver)
    with firebox(driver, work, admin) as server:
        with httpx.Client(base_url=server.url, timeout=600) as setup:
            key = setup_account(setup, admin)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, timeout=600, headers=headers) as api:
            cold = create(api, "cold", 0, args.idle_s)
            until(lambda: get(api, cold)["state"] == "READY", "cold READY")
            for _ in range(args.cold):
                until(lambda: int(get(api, cold).get("replicaCount") or 0) == 0, "zero")
                figures.cold_s.append(first_token_s(api, cold))
                idle_from = time.perf_counter()
                # The row lags the driver by up to one reconcile pass: see it running first.
                until(lambda: int(get(api, cold).get("replicaCount") or 0) >= 1, "running")
                until(lambda: int(get(api, cold).get("replicaCount") or 0) == 0, "zero again")
                figures.to_zero_s.append(time.perf_counter() - idle_from)
            warm = create(api, "warm", 1, 3600)
            until(lambda: int(get(api, warm)["replicaStats"].get("readyReplicaCount") or 0) >= 1,
                  "warm replica")  # fmt: skip
            for _ in range(3):  # both paths warm (the serverless engine loads on first use)
                chat(api, TINY)
                chat(api, warm)
            for _ in range(args.requests):
                figures.serverless_ms.append(chat(api, TINY))
                figures.deployment_ms.append(chat(api, warm))
            for name in (cold, warm):
                api.delete(f"/v1/{name}").raise_for_status()
    return figures


def summary(f: Figures, idle_s: float) -> dict[str, str]:
    med_s = statistics.median(f.serverless_ms)
    med_d = statistics.median(f.deployment_ms)
    return {
        "driver": f.driver,
        "cold start, first token (s)": " / ".join(f"{v:.2f}" for v in f.cold_s),
        "time to zero (s)": " / ".join(f"{v:.2f}" for v in f.to_zero_s) + f" (window {idle_s:g})",
        "serverless median (ms)": f"{med_s:.1f}",
        "deployment median (ms)": f"{med_d:.1f}",
        "added (ms)": f"{med_d - med_s:+.1f}",
        "p90 serverless / deployment (ms)": (
            f"{statistics.quantiles(f.serverless_ms, n=10)[-1]:.1f} / "
            f"{statistics.quantiles(f.deployment_ms, n=10)[-1]:.1f}"
        ),
    }


def markdown(rows: list[dict[str, str]], args: argparse.Namespace) -> str:
    keys = list(rows[0])
    lines = [
        HEADING,
        "",
        "`python bench/deployments.py --drivers "
        f"{args.drivers} --cold {args.cold} --idle-s {args.idle_s:g} --requests {args.requests}`"
        f" on {platform.node()} ({os.cpu_count()} cores, shared), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. One-token chat requests to "
        "`firebox-tiny` on the CPU; medians of the alternating runs. Absolute figures move "
        "up to 2x between runs on this shared machine.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        *("| " + " | ".join(row[k] for k in keys) + " |" for row in rows),
        "",
    ]
    return "\n".join(lines)


def record(path: Path, text: str) -> None:
    doc = path.read_text()
    start = doc.find(HEADING + "\n")
    if start == -1:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        rest = doc[start + len(HEADING) :]
        following = rest.find("\n## ")
        end = start + len(HEADING) + following + 1 if following != -1 else len(doc)
        doc = doc[:start] + text + ("\n" + doc[end:] if following != -1 else "")
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fb-bench-dep") as tmp:
        for driver in [d.strip() for d in args.drivers.split(",") if d.strip()]:
            figures = run_driver(driver, args, Path(tmp))
            rows.append(summary(figures, args.idle_s))
            print(json.dumps(rows[-1], indent=1))
    text = markdown(rows, args)
    print(text)
    if args.record:
        record(ROOT / "docs" / "benchmarks.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
