"""Datasets through the unmodified ``fireworks-ai`` SDK and the CLI, on a real HTTPS server.

The SDK's multi-shard helper demands ``https`` signed URLs, so the server
runs with a certificate from a test CA (``trustme``) and
``FIREBOX_PUBLIC_URL=https://...``; the SDK, its helper's own HTTP client and
the CLI trust that CA through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import fireworks
import httpx
import pytest
import trustme
from fireworks import Fireworks
from fireworks.lib.dataset_upload import upload_dataset_shards

from tests.cli.runner import clean_env, run_cli
from tests.conftest import OPERATOR_KEY
from tests.finetune.dataset_support import chat_line, start_tls_server
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        with cert_path.open("ab") as out:
            out.write(extra.bytes())
    yield ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def server(
    ca_file: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    ca, cert, key = ca_file
    env = {"FIREBOX_ADMIN_KEY": OPERATOR_KEY, "FIREBOX_ACCESS_LOG": "false"}
    running = start_tls_server(tmp_path_factory.mktemp("firebox"), cert, key, ca, env)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def member(server: RunningServer, ca_file: tuple[Path, Path, Path]) -> str:
    trust = ssl.create_default_context(cafile=str(ca_file[0]))
    with httpx.Client(base_url=server.url, timeout=60, verify=trust) as http:
        create_account(http, bearer(OPERATOR_KEY), "tuner")
        return member_key(http, bearer(OPERATOR_KEY), "tuner", "tina", "user")


@pytest.fixture
def client(
    server: RunningServer,
    member: str,
    ca_file: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Fireworks]:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file[0]))
    sdk = Fireworks(api_key=member, base_url=server.url, account_id="tuner", max_retries=0)
    yield sdk
    sdk.close()  # an idle TLS connection left open holds the server's stop for 30 s


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sdk_create_upload_get_list_update_delete(client: Fireworks, tmp_path: Path) -> None:
    made = client.datasets.create(
        dataset_id="chat", dataset={"user_uploaded": {}, "example_count": "3"}
    )
    assert (made.name, made.state, made.example_count) == (
        "accounts/tuner/datasets/chat",
        "UPLOADING",
        "3",
    )
    with pytest.raises(fireworks.ConflictError):
        client.datasets.create(dataset_id="chat", dataset={"user_uploaded": {}})

    data = _write(tmp_path / "train.jsonl", [chat_line(f"q{n}?", f"a{n}.") for n in range(3)])
    uploaded = client.datasets.upload("chat", file=data)
    assert uploaded.filename == "train.jsonl" and uploaded.bytes == data.stat().st_size

    shown = client.datasets.get("chat")
    assert (shown.state, shown.format, shown.example_count) == ("READY", "CHAT", "3")
    assert shown.estimated_token_count is not None and int(shown.estimated_token_count) > 0
    assert "accounts/tuner/datasets/chat" in [d.name for d in client.datasets.list()]
    renamed = client.datasets.update("chat", display_name="Chat data")
    assert renamed.display_name == "Chat data"

    urls = client.datasets.get_download_endpoint("chat").filename_to_signed_urls or {}
    assert list(urls) == ["train.jsonl"] and urls["train.jsonl"].startswith("https://")
    assert httpx.get(urls["train.jsonl"], timeout=30).content == data.read_bytes()

    client.datasets.delete("chat")
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.get("chat")


def test_sdk_shard_helper_uploads_to_https_signed_urls(client: Fireworks, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    _write(shards / "a.jsonl", [chat_line("one?", "1."), chat_line("two?", "2.")])
    _write(shards / "b.jsonl", [chat_line("three?", "3.")])
    client.datasets.create(
        dataset_id="sharded", dataset={"user_uploaded": {}, "example_count": "3"}
    )
    upload_dataset_shards(client, "sharded", str(shards))
    shown = client.datasets.get("sharded")
    assert (shown.state, shown.example_count) == ("READY", "3")
    urls = client.datasets.get_download_endpoint("sharded").filename_to_signed_urls or {}
    assert sorted(urls) == ["a.jsonl", "b.jsonl"]


def test_sdk_upload_of_a_bad_file_names_the_lines(client: Fireworks, tmp_path: Path) -> None:
    client.datasets.create(dataset_id="broken", dataset={"user_uploaded": {}})
    bad = _write(
        tmp_path / "bad.jsonl",
        [chat_line("ok?", "ok."), "{oops", '{"messages": [{"role": "user", "content": "x"}]}'],
    )
    with pytest.raises(fireworks.BadRequestError) as refused:
        client.datasets.upload("broken", file=bad)
    assert "bad.jsonl:2:" in str(refused.value) and "bad.jsonl:3:" in str(refused.value)
    shown = client.datasets.get("broken")
    assert shown.state == "UPLOADING"
    assert shown.status is not None and shown.status.code == "INVALID_ARGUMENT"


def test_cli_create_dataset_shows_progress_then_the_validation(
    server: RunningServer, member: str, ca_file: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    env = clean_env(
        FIREBOX_BASE_URL=server.url,
        FIREBOX_API_KEY=member,
        FIREBOX_ACCOUNT="tuner",
        SSL_CERT_FILE=str(ca_file[0]),
        FIREBOX_DATA_DIR=str(tmp_path),
    )
    good = _write(tmp_path / "good.jsonl", [chat_line(f"q{n}?", f"a{n}.") for n in range(4)])
    made = run_cli("create", "dataset", "cli-good", str(good), "-o", "json", env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    shown = made.json()
    assert (shown["state"], shown["exampleCount"]) == ("READY", "4")
    assert "uploading good.jsonl" in made.stderr  # the progress bar

    signed = run_cli(
        "create", "dataset", "cli-signed", str(good), "--signed-url", env=env, cwd=tmp_path
    )
    assert signed.returncode == 0, signed.stderr
    assert "READY" in signed.stdout

    bad = _write(tmp_path / "bad.jsonl", [chat_line("ok?", "ok."), "not json", "[1, 2]"])
    refused = run_cli("create", "dataset", "cli-bad", str(bad), env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "dataset_invalid" in refused.stderr or "not valid" in refused.stderr
    assert "invalid JSON" in refused.stderr and "not a JSON object" in refused.stderr

    fixed_file = _write(tmp_path / "fixed.jsonl", [chat_line("ok?", "ok.")])
    fixed = run_cli("create", "dataset", "cli-fixed", str(bad), env=env, cwd=tmp_path)
    assert fixed.returncode == 1
    again = run_cli(
        "create", "dataset", "cli-fixed", str(fixed_file), "-o", "json", env=env, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert again.json()["state"] == "READY" and "uploading to it" in again.stderr
    listed = run_cli("list", "datasets", "-o", "json", env=env, cwd=tmp_path)
    names = {d["name"]: d["state"] for d in json.loads(listed.stdout)["datasets"]}
    assert names["accounts/tuner/datasets/cli-good"] == "READY"
    assert names["accounts/tuner/datasets/cli-bad"] == "UPLOADING"
    got = run_cli("get", "dataset", "cli-bad", env=env, cwd=tmp_path)
    assert got.returncode == 0 and "not a JSON object" in got.stderr
    deleted = run_cli("delete", "dataset", "cli-good", env=env, cwd=tmp_path)
    assert deleted.returncode == 0
    assert run_cli("get", "dataset", "cli-good", env=env, cwd=tmp_path).returncode == 4
