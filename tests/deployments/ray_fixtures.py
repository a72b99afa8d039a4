"""The Ray Serve driver's fixtures: one real Ray cluster per test session, and the factory.

The cluster starts on first use (``ray_cluster``, session scope: ~10-20 s)
and is stopped at the session's end with a check that no Ray process is left.
Without ``ray`` installed (``make run``'s light install) the ``ray_serve``
tests are skipped; ``make test`` installs the ``ray`` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

from firebox.deployments.drivers.base import DeploymentDriver
from firebox.deployments.drivers.ray_config import RayServeOptions
from firebox.deployments.drivers.ray_rest import RayDashboard
from firebox.deployments.drivers.ray_serve import RayServeDriver

from ..support.ray_cluster import RayCluster
from ..support.ray_cluster import ray_cluster as start_cluster

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

RAY_INSTALLED = importlib.util.find_spec("ray") is not None


def ray_options(cluster: RayCluster) -> RayServeOptions:
    """Options for the test cluster: fast autoscaling metrics, the bundled models."""
    return RayServeOptions(
        http_host="127.0.0.1",
        http_port=cluster.serve_port,
        models_dir=str(MODELS_DIR),
        look_back_period_s=1.0,
        engine_threads=1,
        max_queued_requests=4,
        retry_after_s=1,
        health_check_period_s=1.0,
        # Held requests must be real load at the replica (Serve's autoscaler counts what
        # the replicas and proxies see): answers run to max_tokens, 0.2 s a token.
        ignore_eos=True,
        token_interval_s=0.2,
    )


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    if not RAY_INSTALLED:
        pytest.skip("ray is not installed (the 'ray' extra)")
    fast_metrics = {  # replicas and proxies report load every 0.25 s (default 10 s)
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
    }
    with start_cluster(log_dir=tmp_path_factory.mktemp("ray"), env=fast_metrics) as cluster:
        yield cluster


@pytest.fixture
def ray_serve_driver_factory(ray_cluster: RayCluster):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def make(capacity: Mapping[str, int]) -> AsyncIterator[DeploymentDriver]:
        # ``capacity`` is the cluster's (8 A100 + 8 H100 virtual GPUs), fixed at start.
        driver = RayServeDriver(
            RayDashboard(ray_cluster.dashboard_url),
            ray_cluster.serve_url,
            ray_options(ray_cluster),
            max_in_flight=8,
            request_timeout_s=240.0,
        )
        try:
            yield driver
        finally:
            with contextlib.suppress(Exception):
                await driver.apply([])
            await driver.close()

    return make
