"""A real ``firebox serve`` for the command-line tests, and a runner bound to it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.runner import ADMIN_KEY, Cli, CliResult, clean_env, run_cli
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server per test module, with its own data dir and a known operator key."""
    data_dir = tmp_path_factory.mktemp("firebox-data")
    running = start_server(
        data_dir, env=clean_env(FIREBOX_ADMIN_KEY=ADMIN_KEY, FIREBOX_ACCESS_LOG="false")
    )
    yield running
    running.stop()


@pytest.fixture
def cli(server: RunningServer, tmp_path: Path) -> Cli:
    """Run the CLI against ``server``; ``api_key=`` switches key, ``None`` sends none.

    The working directory and ``FIREBOX_DATA_DIR`` are an empty temp dir, so no
    saved credentials are picked up by accident.
    """

    def run(*args: str, api_key: str | None = ADMIN_KEY, **env: str) -> CliResult:
        extra = {"FIREBOX_BASE_URL": server.url, "FIREBOX_DATA_DIR": str(tmp_path), **env}
        if api_key is not None:
            extra["FIREBOX_API_KEY"] = api_key
        return run_cli(*args, env=clean_env(**extra), cwd=tmp_path)

    return run


@pytest.fixture
def new_id() -> Callable[[str], str]:
    """A fresh resource id per call, so that tests share a server but no state."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"
