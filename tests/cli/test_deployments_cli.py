"""Deployments on the command line against a real server, and the READY wait on its own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from firebox.cli.commands.deployments import wait_until_ready
from firebox.cli.errors import CliError
from tests.cli.runner import ADMIN_KEY, Cli, CliResult, clean_env
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer, start_server

TINY = "accounts/firebox/models/firebox-tiny"


def ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_wait_shows_progress_until_ready() -> None:
    states = iter(["CREATING", "CREATING", "READY"])
    shown: list[str] = []
    slept: list[float] = []
    ready = wait_until_ready(
        lambda: {"name": "d", "state": next(states)},
        lambda item: shown.append(item["state"]),
        timeout_s=60,
        now=lambda: 0.0,
        sleep=slept.append,
    )
    assert ready["state"] == "READY"
    assert shown == ["CREATING", "CREATING", "READY"]
    assert len(slept) == 2


def test_wait_fails_on_failed_and_on_timeout() -> None:
    failed = {
        "name": "d",
        "state": "FAILED",
        "status": {"code": "RESOURCE_EXHAUSTED", "message": "no GPUs"},
    }
    with pytest.raises(CliError, match="FAILED: no GPUs"):
        wait_until_ready(lambda: failed, lambda _: None, timeout_s=60, sleep=lambda _: None)
    clock = iter([0.0, 5.0, 11.0])
    with pytest.raises(CliError, match="still CREATING after 10s"):
        wait_until_ready(
            lambda: {"name": "d", "state": "CREATING"},
            lambda _: None,
            timeout_s=10,
            now=lambda: next(clock),
            sleep=lambda _: None,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """This module's own server: the deployments API without the controller (states stay)."""
    running = start_server(
        tmp_path_factory.mktemp("firebox-data"),
        env=clean_env(
            FIREBOX_ADMIN_KEY=ADMIN_KEY,
            FIREBOX_ACCESS_LOG="false",
            FIREBOX_DEPLOYMENT_CONTROLLER="false",
        ),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def member_key_of(server: RunningServer) -> Iterator[str]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create_account(http, bearer(ADMIN_KEY), "cli-deps", "BUSINESS")
        yield member_key(http, bearer(ADMIN_KEY), "cli-deps", "cara", "user")


@pytest.mark.slow
def test_deployment_commands(cli: Cli, member_key_of: str) -> None:
    def run(*args: str) -> CliResult:
        return cli(*args, "--account", "cli-deps", api_key=member_key_of)

    made = ok(
        run(
            "create",
            "deployment",
            TINY,
            "--id",
            "web",
            "--accelerator-count",
            "2",
            "--min-replicas",
            "0",
            "--max-replicas",
            "2",
            "--scale-to-zero-window",
            "10m",
            "--no-wait",
            "-o",
            "json",
        )
    ).json()
    assert made["name"] == "accounts/cli-deps/deployments/web"
    assert made["autoscalingPolicy"]["scaleToZeroWindow"] == "600s"
    assert made["acceleratorCount"] == 2

    listed = ok(run("list", "deployments"))
    assert "web" in listed.stdout and "2 x NVIDIA_A100_80GB" in listed.stdout
    assert "CREATING" in listed.stdout
    assert ok(run("get", "deployment", "web", "-o", "json")).json()["maxReplicaCount"] == 2
    changed = ok(run("update", "deployment", "web", "--display-name", "front", "-o", "json")).json()
    assert changed["displayName"] == "front"
    scaled = ok(run("scale", "deployment", "web", "1", "-o", "json")).json()
    assert scaled["desiredReplicaCount"] == 1
    # No runtime drives it to READY here: the wait runs out and says so.
    waited = run("create", "deployment", TINY, "--id", "slow", "--wait-timeout", "1")
    assert waited.returncode == 1 and "still CREATING" in waited.stderr
    over = run("create", "deployment", TINY, "--accelerator-count", "8", "--no-wait")
    assert over.returncode == 1 and "a100-gpus" in over.stderr
    ok(run("delete", "deployment", "web"))
    ok(run("delete", "deployment", "slow", "--hard"))
    assert "web" not in ok(run("list", "deployments")).stdout
    assert "DELETING" in ok(run("list", "deployments", "--show-deleted")).stdout
    shapes = ok(run("list", "deployment-shapes"))
    assert "firebox-tiny-minimal" in shapes.stdout
    missing = run("get", "deployment", "nope")
    assert missing.returncode == 4
