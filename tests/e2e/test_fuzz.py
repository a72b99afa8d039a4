"""A bounded schemathesis run over every non-inference route, as the operator and as a tenant.

``schemathesis run`` (its examples, coverage, fuzzing and stateful phases)
sends requests generated from the server's own ``/openapi.json`` to a real
server on each store (SQLite; PostgreSQL + Redis when the test variables are
set, as in CI) with two checks: no answer is a 5xx (``not_a_server_error``),
and every answer matches its documented schema
(``response_schema_conformance``). Generation is deterministic, so a failure
reproduces on the next run; the report names each failing case as a curl line.
Half the generated ``{account}`` values are a real account (a schemathesis
dictionary), so cases reach past the 404s into the services.

The default run sends ``FIREBOX_TEST_FUZZ_EXAMPLES`` (5) examples per operation and
phase and is part of ``make test``; ``make fuzz`` raises it for a long run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import OPERATOR_KEY, REDIS_URL
from tests.e2e.conftest import E2E_BACKENDS, drop_schema, pg_schema_url
from tests.support.api import bearer, create_account, create_key, create_user
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FIREBOX_TEST_FUZZ_EXAMPLES", "5"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
TENANT = "fuzz-tenant"
# The inference API has its own conformance suites (tests/inference, tests/e2e).
INFERENCE = r"^/(inference/|v1/(chat/|completions|embeddings|models))"
CONFIG = f"""
[dictionaries.accounts]
values = ["{TENANT}"]

[parameters]
"path.account" = {{ dictionary = "accounts", probability = 0.5 }}
"""


@dataclass
class Target:
    server: RunningServer
    keys: dict[str, str]  # role -> API key
    work_dir: Path


@pytest.fixture(scope="module", params=E2E_BACKENDS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    env = {"FIREBOX_ADMIN_KEY": OPERATOR_KEY, "FIREBOX_TEST_CLOCK": "true"}
    schema = None
    if request.param == "postgresql":
        schema, env["FIREBOX_DATABASE_URL"] = pg_schema_url()
        if REDIS_URL:
            env["FIREBOX_REDIS_URL"] = REDIS_URL
    running = start_server(data_dir, env=env)
    operator = bearer(OPERATOR_KEY)
    with httpx.Client(base_url=running.url, timeout=60) as http:
        create_account(http, operator, TENANT)
        create_user(http, operator, TENANT, "admin", "admin")
        tenant = str(create_key(http, operator, TENANT, "admin")["key"])
    yield Target(running, {"operator": OPERATOR_KEY, "tenant": tenant}, data_dir)
    running.stop()
    if schema:
        drop_schema(schema)


@pytest.mark.parametrize("role", ["operator", "tenant"])
def test_fuzz_finds_no_server_error(target: Target, role: str) -> None:
    config = target.work_dir / f"schemathesis-{role}.toml"
    config.write_text(CONFIG)
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{target.server.url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--no-shrink",
        "--exclude-path-regex",
        INFERENCE,
        "--header",
        f"Authorization: Bearer {target.keys[role]}",
        "--continue-on-failure",
        "--suppress-health-check",
        "all",
        "--workers",
        "1",  # hypothesis' lambda descriptions are not thread-safe on 3.11
        "--no-color",
        "--output-sanitize",
        "false",  # show the failing request whole, to reproduce it
        "--request-timeout",
        "60",
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=target.work_dir, check=False)
    report = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0, report
    assert "Tested: 0" not in report  # the operations were found and exercised
