"""Load from Debian's ``wrk``: a closed loop of N connections, a Lua script per request.

wrk is C on epoll, so one thread drives thousands of requests a second on a
core and stays out of the way of the Python servers under test. Its latency
is from sending a request to reading the whole response: for an SSE stream,
that is the last byte (``data: [DONE]``), not the first token.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "wrk is not installed; on Debian or Ubuntu: sudo apt-get install -y wrk"

_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
    .. '"status_errors":%d,"socket_errors":%d,"timeouts":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write, e.timeout))
end
"""


def find_wrk() -> str | None:
    """The path of ``wrk``, or None."""
    return shutil.which("wrk")


def version(wrk: str) -> str:
    """``wrk 4.1.0`` or the like, from its banner."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk \S*?(\d[\w.+-]*)", done.stdout)
    return f"wrk {match.group(1)}" if match else "wrk"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    p50_ms: float | None  # None when no request completed
    p99_ms: float | None
    errors: int  # non-2xx answers, socket errors and timeouts

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def write_script(path: Path, body: dict[str, Any], token: str | None) -> Path:
    """A Lua script that POSTs ``body`` as JSON, with a bearer ``token`` if given."""
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    path.write_text(_LUA.format(body=json.dumps(body, separators=(",", ":")), auth=auth))
    return path


def run(
    wrk: str,
    url: str,
    script: Path,
    *,
    connections: int,
    threads: int,
    duration_s: float,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Load ``url`` for ``duration_s`` with ``connections`` connections."""
    argv = [
        wrk,
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={round(timeout_s)}s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    match = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures = json.loads(match.group(1))
    errors = figures["status_errors"] + figures["socket_errors"] + figures["timeouts"]
    done_any = figures["requests"] > 0
    return WrkResult(
        requests=figures["requests"],
        duration_s=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000 if done_any else None,
        p99_ms=figures["p99_us"] / 1000 if done_any else None,
        errors=errors,
    )
