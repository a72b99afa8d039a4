"""The Serve application a deployment's replicas run (imported on Ray nodes only).

``build(args)`` is the ``import_path`` of every application ``ray_config``
writes; ``args`` are that module's: the base model's weights and the engine
(Firebox's local engine, or vLLM where it is installed on the GPU nodes). The
add-ons placed on the deployment come as Serve's ``user_config``, through
``reconfigure``, so loading one never restarts a replica. A replica loads
the engine in its constructor, so Serve reports it ``RUNNING`` (and the
gateway bills it) only once it can serve. Requests are answered by
``ReplicaServer`` (the OpenAI API).

The gateway never imports this module: it only talks to the Ray dashboard and
the Serve proxy over HTTP.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import httpx
from ray import serve
from ray.serve.deployment import Application
from starlette.requests import Request
from starlette.responses import Response

from firebox.deployments.drivers.replica_server import ReplicaServer
from firebox.inference.engine import TextEngine

log = logging.getLogger("firebox.deployments.ray")

VLLM_START_TIMEOUT_S = 900.0


def _local_engine(args: dict[str, Any]) -> TextEngine:
    from firebox.inference.local.text_engine import LocalTextEngine

    threads = args.get("engine_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    engine = LocalTextEngine.load(
        str(args["weights"]),
        num_threads=int(threads) if threads else None,
        eos_token_ids=() if args.get("ignore_eos") else None,
    )
    return engine


def _vllm_engine(args: dict[str, Any]) -> tuple[TextEngine, subprocess.Popen[bytes]]:
    """vLLM's OpenAI server in a child process, reached with Firebox's upstream engine."""
    from firebox.inference.upstream import UpstreamEngine

    port = 18000 + os.getpid() % 20000
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(args["weights"]),
        "--served-model-name",
        str(args["model"]),
        "--tensor-parallel-size",
        str(int(args.get("accelerator_count") or 1)),
    ]
    if args.get("max_context_length"):
        command += ["--max-model-len", str(int(args["max_context_length"]))]
    command += ["--enable-lora"]  # add-ons arrive at run time (``reconfigure``)
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + VLLM_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with status {process.returncode} while starting")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    else:
        process.kill()
        raise RuntimeError("vLLM did not become healthy in time")
    return UpstreamEngine([f"http://127.0.0.1:{port}/v1"], str(args["model"])), process


@serve.deployment
class FireboxReplica:
    """One replica of a deployment: an engine behind the OpenAI routes."""

    def __init__(self, args: dict[str, Any]) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        if args.get("engine") == "vllm":
            engine, self._process = _vllm_engine(args)
        else:
            engine = _local_engine(args)
        self._server = ReplicaServer(
            engine,
            str(args["model"]),
            set(),
            token_interval_s=float(args.get("token_interval_s") or 0.0),
            aliases=frozenset({str(args["deployment"])}),
        )
        log.info("replica of %s ready (revision %s)", args["deployment"], args.get("revision"))

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """The add-ons placed on the deployment (Serve's user_config), at start and on change."""
        wanted = {str(addon["name"]): str(addon["path"]) for addon in config.get("addons") or ()}
        engine = self._server.engine
        for name, path in wanted.items():
            if name in self._server.addons:
                continue
            register = getattr(engine, "register_adapter", None)
            if register is not None:  # Firebox's engine: reads the folder, loads on first use
                register(name, path)
            else:  # vLLM: its runtime LoRA API
                await engine.load_adapter(name, path)  # type: ignore[attr-defined]
        self._server.addons = set(wanted)
        log.info("add-ons on this replica: %s", sorted(wanted) or "none")

    async def __call__(self, request: Request) -> Response:
        return await self._server.handle(request)

    def check_health(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError("the vLLM server of this replica exited")

    def __del__(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()


def build(args: dict[str, Any]) -> Application:
    """The application of one deployment (Serve's ``import_path`` target)."""
    application: Application = FireboxReplica.bind(args)  # type: ignore[attr-defined]
    return application
