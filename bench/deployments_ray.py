"""Deployments on Ray Serve: cold start from zero, time to scale to zero, added latency.

Starts a local Ray cluster (free ports, virtual GPUs, as the tests do) and runs
the bundled ``firebox-tiny`` through the Ray Serve driver:

- cold start: a deployment at zero replicas gets one streaming request; the
  time to its first token (the replica starts, loads the engine, answers);
- scale to zero: from the end of the last request until the driver observes
  no replica, with ``scaleToZeroWindow`` = 1 s (the rest is Serve's metrics
  push interval, its decision loop and the replica's shutdown);
- added latency: warm requests (``max_tokens`` 8, one at a time) through the
  driver's engine (Serve proxy, replica HTTP, the local engine in the replica)
  against the same engine loaded in this process, as serverless traffic of
  the local engine runs it: the difference is what deployment traffic adds
  after the gateway's common serving path.

    python bench/deployments_ray.py [--rounds 3] [--requests 30] [--no-record]

Records the run in docs/benchmarks.md under ``## Deployments on Ray Serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.deployments.support import target  # noqa: E402
from tests.support.ray_cluster import ray_cluster  # noqa: E402

from firebox.deployments.drivers.base import ReplicaState  # noqa: E402
from firebox.deployments.drivers.ray_config import RayServeOptions  # noqa: E402
from firebox.deployments.drivers.ray_rest import RayDashboard  # noqa: E402
from firebox.deployments.drivers.ray_serve import RayServeDriver  # noqa: E402
from firebox.inference.engine import (  # noqa: E402
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    TextEngine,
)

MODELS = ROOT / "models"
HEADING = "## Deployments on Ray Serve"
FAST_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
}


def chat(max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        request_id=uuid.uuid4().hex,
        model="accounts/firebox/models/firebox-tiny",
        kind="chat",
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[{"role": "user", "content": "Say hello."}],
    )


async def timed(engine: TextEngine, request: GenerationRequest) -> tuple[float, float]:
    """(seconds to the first text, seconds to the end) of one request."""
    start = time.perf_counter()
    first = None
    events: AsyncIterator[GenerationEvent] = engine.generate(request)
    async for event in events:
        if first is None and isinstance(event, TextDelta) and event.text:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return (first if first is not None else total), total


async def replicas(driver: RayServeDriver, name: str) -> int:
    seen = (await driver.observe()).get(name)
    return len(seen.replicas) if seen is not None else 0


async def ready(driver: RayServeDriver, name: str) -> int:
    seen = (await driver.observe()).get(name)
    replicas = seen.replicas if seen is not None else ()
    return sum(1 for r in replicas if r.state is ReplicaState.READY)


async def until_count(driver: RayServeDriver, name: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await replicas(driver, name) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not reach {count} replicas")
        await asyncio.sleep(0.05)


async def measure(cluster_url: str, serve_url: str, port: int, args: argparse.Namespace) -> dict:
    options = RayServeOptions(
        http_host="127.0.0.1",
        http_port=port,
        models_dir=str(MODELS),
        look_back_period_s=1.0,
        engine_threads=1,
    )
    driver = RayServeDriver(RayDashboard(cluster_url), serve_url, options, request_timeout_s=300)
    t = target(
        f"bench{uuid.uuid4().hex[:6]}",
        max_replicas=1,
        scale_down_window_s=1.0,
        scale_to_zero_window_s=1.0,
    )
    cold: list[float] = []
    to_zero: list[float] = []
    try:
        await driver.apply([t])
        engine = driver.engine(t.name)
        for _ in range(args.rounds):
            await until_count(driver, t.name, 0, 300)
            first, _ = await timed(engine, chat())
            cold.append(first)
            end = time.perf_counter()
            await until_count(driver, t.name, 0, 300)
            to_zero.append(time.perf_counter() - end)
        # Warm: keep one replica (fixed) and compare with the same engine in process.
        await driver.apply([dataclasses.replace(t, fixed_replicas=1)])
        while await ready(driver, t.name) < 1:
            await asyncio.sleep(0.1)
        for _ in range(3):
            await timed(engine, chat())
        ray_lat = [await timed(engine, chat()) for _ in range(args.requests)]
    finally:
        await driver.apply([])
        await driver.close()

    from firebox.inference.local.text_engine import LocalTextEngine

    local = LocalTextEngine.load(MODELS / "firebox-tiny", num_threads=1)
    try:
        for _ in range(3):
            await timed(local, chat())
        local_lat = [await timed(local, chat()) for _ in range(args.requests)]
    finally:
        await local.close()
    return {"cold": cold, "to_zero": to_zero, "ray": ray_lat, "local": local_lat}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(start_s: float, figures: dict, args: argparse.Namespace) -> str:
    ray_first = med([f for f, _ in figures["ray"]]) * 1000
    ray_total = med([t for _, t in figures["ray"]]) * 1000
    local_first = med([f for f, _ in figures["local"]]) * 1000
    local_total = med([t for _, t in figures["local"]]) * 1000
    cold = ", ".join(f"{v:.1f}" for v in figures["cold"])
    zero = ", ".join(f"{v:.1f}" for v in figures["to_zero"])
    load = os.getloadavg()[0]
    return "\n".join(
        [
            f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores shared "
            f"(load average {load:.1f}), Ray 2.60, `--rounds {args.rounds} "
            f"--requests {args.requests}`:",
            "",
            "| figure | value |",
            "|---|---|",
            f"| Ray cluster start (head, dashboard) | {start_s:.1f} s |",
            f"| cold start from zero to first token (each round) | {cold} s |",
            f"| scale to zero after the last request, window 1 s (each round) | {zero} s |",
            f"| warm first token, Ray path / in-process engine (p50) | "
            f"{ray_first:.1f} / {local_first:.1f} ms |",
            f"| warm whole answer (8 tokens), Ray path / in-process engine (p50) | "
            f"{ray_total:.1f} / {local_total:.1f} ms |",
            f"| added by deployment traffic on Ray (first token, p50) | "
            f"{ray_first - local_first:.1f} ms |",
        ]
    )


def record(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    section = (
        f"{HEADING}\n\n`bench/deployments_ray.py` (the Ray Serve driver on a local Ray "
        "cluster with virtual GPUs, the bundled firebox-tiny on the CPU).\n\n"
        f"<!-- ray:begin -->\n{text}\n<!-- ray:end -->\n"
    )
    if "<!-- ray:begin -->" in doc:
        head, rest = doc.split("<!-- ray:begin -->", 1)
        tail = rest.split("<!-- ray:end -->", 1)[1]
        doc = f"{head}<!-- ray:begin -->\n{text}\n<!-- ray:end -->{tail}"
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with ray_cluster(env=FAST_METRICS) as cluster:
        start_s = time.perf_counter() - started
        figures = asyncio.run(
            measure(cluster.dashboard_url, cluster.serve_url, cluster.serve_port, args)
        )
    text = report(start_s, figures, args)
    print(text)
    if not args.no_record:
        record(text)


if __name__ == "__main__":
    main()
