"""The command line against a real server: outputs, secrets and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import ADMIN_KEY, Cli, CliResult, clean_env, run_cli
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

NewId = Callable[[str], str]


def ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def failed(result: CliResult, code: int) -> CliResult:
    """Assert exit ``code`` with one human ``error:`` line on stderr and no traceback."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def api(server: RunningServer) -> Iterator[httpx.Client]:
    """Direct HTTP for setting up state quickly; what is under test goes through the CLI."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def make_account(api: httpx.Client, account: str, plan: str = "BUSINESS") -> None:
    create_account(api, bearer(ADMIN_KEY), account, plan)


def make_member(api: httpx.Client, new_id: NewId, role: str = "admin") -> tuple[str, str, str]:
    """A fresh account with one ``role`` user; returns (account, user, that user's key)."""
    account, user = new_id("acct"), new_id("user")
    make_account(api, account)
    key = member_key(api, bearer(ADMIN_KEY), account, user, role)
    return account, user, key


def test_serve_prints_url_and_keys(server: RunningServer) -> None:
    banner = server.log()
    assert f"serving on {server.url}" in banner
    assert f"{server.url}/v1/accounts/demo" in banner
    assert f'OpenAI(base_url="{server.url}/inference/v1"' in banner
    assert "firebox list users --account demo" in banner
    saved = json.loads((Path(server.log_path).parent / "credentials.json").read_text())
    assert saved["demoKey"] in banner


def test_create_account_with_business_plan(cli: Cli, new_id: NewId) -> None:
    account = new_id("acct")
    created = ok(
        cli(
            "create",
            "account",
            account,
            "--plan",
            "BUSINESS",
            "--display-name",
            "Acme",
            "-o",
            "json",
        )
    ).json()
    assert created["name"] == f"accounts/{account}"
    assert (created["plan"], created["displayName"]) == ("BUSINESS", "Acme")

    table = ok(cli("get", "account", account)).stdout
    assert f"accounts/{account}" in table
    assert "BUSINESS" in table


def test_global_options_go_before_or_after_the_command(
    api: httpx.Client, cli: Cli, new_id: NewId
) -> None:
    account = new_id("acct")
    make_account(api, account)
    before = ok(cli("-o", "json", "--account", account, "get", "account")).json()
    after = ok(cli("get", "account", "--account", account, "-o", "json")).json()
    from_env = ok(cli("-o", "json", "get", "account", FIREBOX_ACCOUNT=account)).json()
    assert before == after == from_env
    assert before["name"] == f"accounts/{account}"


def test_connection_options_after_the_noun(
    api: httpx.Client, cli: Cli, server: RunningServer, new_id: NewId
) -> None:
    """``firebox list quotas --base-url URL --api-key K``, as firectl/kubectl/gh accept."""
    account = new_id("acct")
    make_account(api, account)
    nowhere = "http://127.0.0.1:9"  # the environment points at nothing: only the flags can work
    result = ok(
        cli(
            "list",
            "quotas",
            "--base-url",
            server.url,
            "--api-key",
            ADMIN_KEY,
            "--account",
            account,
            "-o",
            "json",
            api_key=None,
            FIREBOX_BASE_URL=nowhere,
        )
    )
    assert result.json()["quotas"]


def test_create_user_then_list_update_and_get(api: httpx.Client, cli: Cli, new_id: NewId) -> None:
    account, user = new_id("acct"), new_id("user")
    make_account(api, account)
    created = ok(
        cli(
            "create", "user", user, "--role", "contributor", "--email", f"{user}@example.com",
            "--display-name", "Ada", "--account", account, "-o", "json",
        )
    ).json()  # fmt: skip
    assert created["name"] == f"accounts/{account}/users/{user}"
    assert (created["role"], created["email"]) == ("contributor", f"{user}@example.com")

    table = ok(cli("list", "users", "--account", account)).stdout
    assert created["name"] in table
    assert "contributor" in table

    updated = ok(
        cli("update", "user", user, "--role", "user", "--account", account, "-o", "json")
    ).json()
    assert updated["role"] == "user"
    assert ok(cli("get", "user", user, "--account", account, "-o", "json")).json() == updated


def test_new_api_key_works_until_deleted(api: httpx.Client, cli: Cli, new_id: NewId) -> None:
    account, user, _ = make_member(api, new_id)
    key = ok(
        cli("create", "api-key", "--user", user, "--account", account, "--display-name", "ci",
            "-o", "json")
    ).json()  # fmt: skip
    secret = key["key"]
    assert secret and key["keyId"] and key["displayName"] == "ci"

    as_user = ok(cli("get", "account", account, "-o", "json", api_key=secret)).json()
    assert as_user["name"] == f"accounts/{account}"

    listed = ok(cli("list", "api-keys", "--user", user, "--account", account, "-o", "json"))
    assert key["keyId"] in [k["keyId"] for k in listed.json()["apiKeys"]]
    assert secret not in listed.stdout

    deleted = ok(cli("delete", "api-key", key["keyId"], "--user", user, "--account", account))
    assert key["keyId"] in deleted.stdout
    failed(cli("get", "account", account, api_key=secret), 3)


def test_create_api_key_table_output_puts_only_the_secret_on_stdout(
    api: httpx.Client, cli: Cli, new_id: NewId
) -> None:
    account, user, _ = make_member(api, new_id)
    result = ok(cli("create", "api-key", "--user", user, "--account", account))
    secret = result.stdout.strip()
    assert secret and "\n" not in secret and " " not in secret
    assert "cannot be shown again" in result.stderr
    assert api.get(f"/v1/accounts/{account}", headers=bearer(secret)).status_code == 200


def test_update_account_plan(api: httpx.Client, cli: Cli, new_id: NewId) -> None:
    account = new_id("acct")
    make_account(api, account, plan="DEVELOPER")
    updated = ok(
        cli(
            "update",
            "account",
            account,
            "--plan",
            "enterprise",
            "--display-name",
            "Big",
            "-o",
            "json",
        )
    ).json()
    assert (updated["plan"], updated["displayName"]) == ("ENTERPRISE", "Big")


def test_missing_account_exits_4(cli: Cli, new_id: NewId) -> None:
    missing = new_id("missing")
    result = failed(cli("get", "account", missing), 4)
    assert missing in result.stderr
    assert "not_found" in result.stderr
    assert result.stdout == ""


def test_creating_an_account_twice_exits_5(api: httpx.Client, cli: Cli, new_id: NewId) -> None:
    account = new_id("acct")
    make_account(api, account)
    result = failed(cli("create", "account", account), 5)
    assert "already exists" in result.stderr


def test_bad_or_missing_key_exits_3(cli: Cli) -> None:
    failed(cli("list", "accounts", api_key="fb_not_a_real_key_0000000000000000"), 3)
    no_key = failed(cli("list", "accounts", api_key=None), 3)
    assert "FIREBOX_API_KEY" in no_key.stderr


def test_role_without_permission_exits_3(api: httpx.Client, cli: Cli, new_id: NewId) -> None:
    account, _, key = make_member(api, new_id, role="inference-user")
    result = failed(cli("list", "users", "--account", account, api_key=key), 3)
    assert "role" in result.stderr


def test_api_key_falls_back_to_saved_operator_key(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps({"operatorKey": ADMIN_KEY}))
    env = clean_env(FIREBOX_BASE_URL=server.url, FIREBOX_DATA_DIR=str(tmp_path))
    listed = ok(run_cli("list", "accounts", "-o", "json", env=env, cwd=tmp_path)).json()
    names = {a["name"] for a in listed["accounts"]}
    assert {"accounts/firebox", "accounts/demo"} <= names


def test_list_accounts_as_json_and_table(api: httpx.Client, cli: Cli, new_id: NewId) -> None:
    made = {new_id("list") for _ in range(3)}
    for account in made:
        make_account(api, account)
    listed = ok(cli("list", "accounts", "-o", "json")).json()
    names = [a["name"] for a in listed["accounts"]]
    assert {f"accounts/{a}" for a in made} <= set(names)
    assert listed["totalSize"] == len(names)
    table = ok(cli("list", "accounts"))
    assert all(f"accounts/{a}" in table.stdout for a in made)
    assert "total: " in table.stderr
