"""A real single-node Ray cluster for the tests: started on free ports, torn down whole.

``ray start --head --block`` runs in its own session (``setsid``), so every
process Ray starts (GCS, raylet, dashboard and its modules, workers, the
Serve controller, proxy and replicas) shares that session id: stopping is a
SIGTERM to the ``ray start`` process (Ray stops its children), then a check
that nothing of the session is left, and SIGKILL of the session's process
group as the last resort. Nothing else on the machine is touched, and no
``ray stop`` (which stops every Ray of the user).

Ports: every port Ray opens is passed explicitly and chosen free (Redis holds
6379, Ray's default GCS port, on these machines). Token authentication is
off (``RAY_AUTH_MODE=disabled``): the cluster listens on loopback only.
CPU-only machines get virtual GPUs (``--num-gpus``) and accelerator-type
resources, so GPU replicas schedule.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

import firebox

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
# Runs ``ray start`` after asking Linux for a SIGTERM when the test process dies without
# tearing down (killed): ``ray start --block`` then stops every process it started.
_STOP_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

# What the tests' cluster offers: 8 "GPUs", usable as A100 and as H100.
DEFAULT_RESOURCES = {"accelerator_type:A100": 8, "accelerator_type:H100": 8}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_executable() -> str | None:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else shutil.which("ray")


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (Linux /proc), zombies excluded."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class RayCluster:
    """A running test cluster: where its dashboard and Serve proxy listen."""

    process: subprocess.Popen[bytes]
    dashboard_url: str
    serve_port: int
    temp_dir: str
    log_path: Path

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    def leftovers(self) -> list[int]:
        return session_pids(self.process.pid)

    def stop(self) -> list[int]:
        """Stop everything; returns the pids that had to be SIGKILLed (ideally none)."""
        with contextlib.suppress(httpx.HTTPError):  # Serve first: replicas exit cleanly
            httpx.delete(f"{self.dashboard_url}/api/serve/applications/", timeout=30.0)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None and not self.leftovers():
                break
            time.sleep(0.2)
        killed = self.leftovers()
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # the group we created, by id
            for pid in killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def start_ray_cluster(
    *,
    num_cpus: int = 2,
    num_gpus: int = 8,
    resources: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
) -> RayCluster:
    """Start a head node on loopback with free ports; wait until its dashboard answers."""
    ray = ray_executable()
    if ray is None:
        raise RuntimeError("the ray CLI is not installed (pip install 'firebox[ray]')")
    # A short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="rfb", dir="/tmp")
    dashboard_port = free_port()
    src = str(Path(firebox.__file__).resolve().parents[1])
    child_env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "RAY_DEDUP_LOGS": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
        **(env or {}),
    }
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard_port,
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    command = [
        ray,
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        str(num_gpus),
        "--resources",
        json.dumps(dict(resources or DEFAULT_RESOURCES)),
        "--object-store-memory",
        str(100 * 1024 * 1024),
        "--temp-dir",
        temp_dir,
    ]
    for flag, port in ports.items():
        command += [flag, str(port)]
    log_path = (log_dir or Path(temp_dir)) / "ray-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _STOP_WITH_PARENT, *command],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one session id for all of Ray's processes
        )
    cluster = RayCluster(
        process, f"http://127.0.0.1:{dashboard_port}", free_port(), temp_dir, log_path
    )
    try:
        _wait_ready(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_ready(cluster: RayCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if cluster.process.poll() is not None:
            raise RuntimeError(
                f"ray start exited with {cluster.process.returncode}: "
                f"{cluster.log_path.read_text(errors='replace')[-2000:]}"
            )
        try:
            serve = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=5.0)
            nodes = httpx.get(f"{cluster.dashboard_url}/api/v0/nodes", timeout=5.0)
            if serve.status_code == 200 and nodes.status_code == 200 and '"ALIVE"' in nodes.text:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray dashboard did not answer within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def ray_cluster(**kw: object) -> Iterator[RayCluster]:
    """``start_ray_cluster`` as a context manager that fails if a process had to be killed."""
    cluster = start_ray_cluster(**kw)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        killed = cluster.stop()
        assert not killed, f"Ray left processes behind that had to be killed: {killed}"
