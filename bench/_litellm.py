"""The LiteLLM proxy, the gateway Firebox is compared with, in its own venv.

``bench/.venv-litellm`` is created on first use (``pip install 'litellm[proxy]'``,
a few minutes) and kept: LiteLLM's dependencies must not mix with Firebox's.
The proxy runs one worker, no database, a master key (it refuses to start
without one), and the bundled model-cost map (it would fetch one otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _procs import Server, free_port, start

VENV = Path(__file__).resolve().parent / ".venv-litellm"
MASTER_KEY = "sk-bench-gateway-overhead"


def ensure_venv(venv: Path = VENV) -> Path:
    """The venv's ``litellm`` executable, installing it first if absent."""
    litellm = venv / "bin" / "litellm"
    if litellm.exists():
        return litellm
    started = time.monotonic()
    print(f"creating {venv} for the LiteLLM proxy (first run only)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    print("  installing litellm[proxy] with pip (a few minutes)...", flush=True)
    subprocess.run([*pip, "--quiet", "litellm[proxy]"], check=True)
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    return litellm


def version(venv: Path = VENV) -> str:
    """The installed LiteLLM version."""
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def write_config(path: Path, *, model: str, upstream_model: str, upstream_url: str) -> Path:
    """A proxy config routing ``model`` to the upstream (JSON is valid YAML)."""
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{upstream_model}",
                    "api_base": upstream_url,
                    "api_key": "dummy",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {
            "master_key": MASTER_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def start_proxy(litellm: Path, config: Path, log_dir: Path, timeout_s: float = 240.0) -> Server:
    """Run the proxy, one worker, on a free loopback port; wait for its health route."""
    port = free_port()
    argv = [
        str(litellm),
        *("--config", str(config)),
        *("--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"),
    ]
    env = os.environ | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
    }
    return start(
        "litellm",
        argv,
        url=f"http://127.0.0.1:{port}",
        health_path="/health/liveliness",
        log_dir=log_dir,
        env=env,
        cwd=log_dir,
        timeout_s=timeout_s,
    )
