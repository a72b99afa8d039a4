"""Helpers of the dataset tests."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.finetune.dataset_models import staging_prefix
from firebox.finetune.dataset_repository import get
from firebox.services import Services
from tests.support.server import FIREBOX, RunningServer, free_port


def chat_line(question: str, answer: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )


def operator_principal() -> Principal:
    return Principal(
        account_id="firebox",
        user_id="operator",
        user_pk=0,
        role=Role.ADMIN,
        key_id="k",
        key_hash="h",
        is_operator=True,
    )


def put_file(services: Services, account: str, dataset: str, name: str, text: str) -> None:
    """Stage a file of a dataset as an upload would have (validate_stored reads it)."""
    with services.db.transaction() as session:
        row = get(session, account, dataset)
        assert row is not None
        prefix = staging_prefix(row)
    writer = services.storage.blobs.writer(f"{prefix}/{name}", max_bytes=10**9)
    writer.write(text.encode())
    writer.commit()


def start_tls_server(
    data_dir: Path, cert: Path, key: Path, ca: Path, env: dict[str, str]
) -> RunningServer:
    """``firebox serve`` over HTTPS on a free port; returns once ``/healthz`` answers."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    url = f"https://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "FIREBOX_WARM_LOCAL_ENGINES": "false",
        "FIREBOX_TLS_CERTFILE": str(cert),
        "FIREBOX_TLS_KEYFILE": str(key),
        "FIREBOX_PUBLIC_URL": url,
        **env,
    }
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(FIREBOX), *args], stdout=log, stderr=subprocess.STDOUT, env=full_env
        )
    server = RunningServer(url, process, log_path)
    trust = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"firebox serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=trust).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"firebox serve did not answer over HTTPS in 60 s:\n{server.log()}")
