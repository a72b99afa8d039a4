"""Servers a benchmark starts on loopback, and stops whatever happens.

Each server runs in its own session (process group), with its output in a
log file, so ``stop`` can end it and any worker it forked, by its own id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


class TimeLimitReached(Exception):
    """Raised by the alarm when a benchmark runs past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeLimitReached`` in the main thread after ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeLimitReached(f"the benchmark ran past its time limit ({seconds:.0f} s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, round(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server process: its name, base URL and log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it after ``grace_s``."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=5)
        # a worker the server forked may outlive it: end the rest of its group
        _signal_group(self.process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # the group of the process we started, by its id


def start(
    name: str,
    argv: Sequence[str],
    *,
    url: str,
    health_path: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60.0,
) -> Server:
    """Start ``argv`` and return once ``url + health_path`` answers 200.

    ``env`` is the whole environment of the process (default: this one's).
    """
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ) if env is None else env,
            cwd=cwd,
            start_new_session=True,
        )
    server = Server(name, url, process, log_path)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode} while starting:\n{server.log_tail()}"
                )
            try:
                if httpx.get(url + health_path, timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer {health_path} in {timeout_s:.0f} s")
    except BaseException:
        server.stop()
        raise
