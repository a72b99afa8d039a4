"""Start a real ``firebox serve`` process on a free loopback port, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

FIREBOX = Path(sys.executable).parent / "firebox"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                # A clean stop drains the ledger queue, which tests rely on; on a loaded
                # machine that takes seconds. 60 s is only the failure path.
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    data_dir: Path, *, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> RunningServer:
    """Run ``firebox serve`` and return once ``/healthz`` answers 200."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    # Loading the in-process models costs seconds of CPU; only tests that use them opt in.
    full_env = {**os.environ, "FIREBOX_WARM_LOCAL_ENGINES": "false", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(FIREBOX),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    server = RunningServer(url, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"firebox serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"firebox serve did not become healthy in {timeout_s}s:\n{server.log()}")
