"""Model commands against a real server: upload, list, get, load, unload, delete."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import ADMIN_KEY, Cli, CliResult
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

LORA_DIR = Path(__file__).resolve().parents[2] / "models" / "firebox-tiny-lora"
TINY = "accounts/firebox/models/firebox-tiny"


def ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def failed(result: CliResult, code: int) -> CliResult:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    # Upload progress bars may come first on stderr; the error is one "error:" line.
    assert "error: " in result.stderr and "Traceback" not in result.stderr
    return result


@pytest.fixture
def member(server: RunningServer) -> tuple[str, str]:
    """A fresh account and a key of a user in it."""
    account = f"m-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_account(http, bearer(ADMIN_KEY), account, plan="DEVELOPER")
        return account, member_key(http, bearer(ADMIN_KEY), account, "ann", "user")


def test_create_list_get_load_unload_delete_round_trip(
    cli: Cli, member: tuple[str, str], tmp_path: Path
) -> None:
    account, key = member
    adapter = shutil.copytree(LORA_DIR, tmp_path / "adapter")

    shared = ok(cli("list", "models", "--account", "firebox", "-o", "json", api_key=key)).json()
    assert TINY in [m["name"] for m in shared["models"]]

    made = ok(
        cli(
            "create", "model", "upper", str(adapter), "--base-model", TINY,
            "--account", account, "-o", "json", api_key=key,
        )
    ).json()  # fmt: skip
    name = f"accounts/{account}/models/upper"
    assert (made["name"], made["state"], made["kind"]) == (name, "READY", "HF_PEFT_ADDON")
    assert made["peftDetails"]["r"] == 8

    table = ok(cli("list", "models", "--account", account, api_key=key))
    assert "upper" in table.stdout and "READY" in table.stdout and "firebox-tiny" in table.stdout
    got = ok(cli("get", "model", name, "-o", "json", api_key=key)).json()
    assert got["priceClass"] == "TEXT_DENSE_UP_TO_16B"
    renamed = ok(
        cli("update", "model", "upper", "--display-name", "Upper", "--account", account,
            "-o", "json", api_key=key)
    ).json()  # fmt: skip
    assert renamed["displayName"] == "Upper"

    loaded = ok(
        cli("list", "deployed-models", "--account", account, "-o", "json", api_key=key)
    ).json()
    assert [d["model"] for d in loaded["deployedModels"]] == [name]

    busy = failed(cli("delete", "model", "upper", "--account", account, api_key=key), 1)
    assert f"accounts/{account}/deployedModels/upper" in busy.stderr
    ok(cli("unload-lora", name, "--account", account, api_key=key))
    ok(cli("load-lora", name, "--account", account, api_key=key))
    ok(cli("unload-lora", "upper", "--account", account, api_key=key))
    ok(cli("delete", "model", "upper", "--account", account, api_key=key))
    left = ok(cli("list", "models", "--account", account, "-o", "json", api_key=key)).json()
    assert left["models"] == []
    missing = failed(cli("get", "model", "upper", "--account", account, api_key=key), 4)
    assert "was not found" in missing.stderr


def test_problems_are_printed_by_file(cli: Cli, member: tuple[str, str], tmp_path: Path) -> None:
    account, key = member
    pickled = shutil.copytree(LORA_DIR, tmp_path / "pickled")
    (pickled / "training_args.bin").write_bytes(b"\x80\x04")
    refused = failed(
        cli("create", "model", "p", str(pickled), "--base-model", TINY, "--account", account,
            api_key=key),
        1,
    )  # fmt: skip
    assert "- training_args.bin: pickle-based weights are refused" in refused.stderr

    mismatched = shutil.copytree(LORA_DIR, tmp_path / "mismatched")
    config = json.loads((mismatched / "adapter_config.json").read_text())
    config["r"] = 16  # the tensors keep rank 8
    (mismatched / "adapter_config.json").write_text(json.dumps(config))
    invalid = failed(
        cli("create", "model", "m", str(mismatched), "--base-model", TINY, "--account", account,
            api_key=key),
        1,
    )  # fmt: skip
    assert "the model stays UPLOADING" in invalid.stderr
    assert "- adapter_model.safetensors: layer 0 " in invalid.stderr
    assert "rank 8, but adapter_config r=16" in invalid.stderr
    assert "and 24 more problems like these" in invalid.stderr  # 28 projections, 4 shown
    shown = ok(cli("get", "model", "m", "--account", account, "-o", "json", api_key=key)).json()
    assert shown["state"] == "UPLOADING"

    no_base = failed(cli("create", "model", "x", str(mismatched), "--account", account), 2)
    assert "--base-model" in no_base.stderr
    # --deployment reaches the deployedModels API: a deployment that does not exist is a 404.
    onto = failed(cli("load-lora", "m", "--deployment", "d1", "--account", account, api_key=key), 4)
    assert "deployment_not_found" in onto.stderr
