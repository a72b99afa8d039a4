"""Fixtures of the deployments tests.

Accounts on each plan with member keys (the API tests), and the deployment
driver fixture: one list of driver kinds, one factory fixture per kind.

The contract suite (``test_driver_contract.py``) asks for ``make_driver``,
parametrized over ``DRIVERS``. A kind ``k`` is provided by a fixture named
``k_driver_factory`` returning ``DriverFactory``: called with the virtual
capacity wanted, it gives an async context manager yielding a running
driver and stopping everything it ran on exit. The Ray Serve driver adds
``"ray_serve"`` here and its ``ray_serve_driver_factory`` fixture beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from firebox.clock import SystemClock
from firebox.deployments.drivers.base import DeploymentDriver
from firebox.deployments.drivers.local import LocalDriver
from firebox.deployments.replica_engines import local_capabilities, local_engine_maker
from firebox.settings import Settings
from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key

from .ray_fixtures import ray_cluster, ray_serve_driver_factory  # noqa: F401  (fixtures)

# A real Ray cluster and replicas that load torch: slow (CI runs it; `make test-fast` skips it).
DRIVERS = ["local", pytest.param("ray_serve", marks=pytest.mark.slow)]

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

DriverFactory = Callable[
    [Mapping[str, int]], contextlib.AbstractAsyncContextManager[DeploymentDriver]
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def local_driver_factory() -> DriverFactory:
    torch.set_num_threads(1)

    @contextlib.asynccontextmanager
    async def make(capacity: Mapping[str, int]) -> AsyncIterator[DeploymentDriver]:
        driver = LocalDriver(
            local_engine_maker(MODELS_DIR, kv_cache_tokens=4096, num_threads=1),
            SystemClock(),
            capacity=capacity,
            tick_s=0.1,
            queue_limit=4,
            wake_timeout_s=120,
            default_capabilities=local_capabilities(),
        )
        try:
            yield driver
        finally:
            await driver.close()

    return make


@pytest.fixture(params=DRIVERS)
def make_driver(request: pytest.FixtureRequest) -> DriverFactory:
    """A factory of the driver under test (each kind in ``DRIVERS``)."""
    factory: DriverFactory = request.getfixturevalue(f"{request.param}_driver_factory")
    return factory


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The suite's settings with short deployment loops (tests wait on conditions, not time).

    The controller stays off here: the API tests play the runtime's part themselves.
    Runtime tests turn it on (``runtime_settings``).
    """
    torch.set_num_threads(1)
    return Settings(
        data_dir=tmp_path / "data",
        admin_key=OPERATOR_KEY,
        access_log=False,
        bootstrap_demo=True,
        warm_local_engines=False,
        deployment_reconcile_interval_s=0.2,
        deployment_tick_s=0.1,
        deployment_kv_cache_tokens=4096,
        deployment_replica_threads=1,
        deployment_controller=False,
    )


TINY = "accounts/firebox/models/firebox-tiny"
LORA = "accounts/firebox/models/firebox-tiny-lora"


@dataclass
class Member:
    account: str
    headers: dict[str, str]

    @property
    def base(self) -> str:
        return f"/v1/accounts/{self.account}/deployments"


def make_member(client: TestClient, operator: dict[str, str], account: str, plan: str) -> Member:
    create_account(client, operator, account, plan=plan)
    key = member_key(client, operator, account, "dana", "user")
    return Member(account, bearer(key))


@pytest.fixture
def dev(client: TestClient, operator_headers: dict[str, str]) -> Member:
    return make_member(client, operator_headers, "dev-co", "DEVELOPER")


@pytest.fixture
def ent(client: TestClient, operator_headers: dict[str, str]) -> Member:
    return make_member(client, operator_headers, "ent-co", "ENTERPRISE")
