"""The Serve application a deployment's replicas run (imported on Ray nodes only).

``build(args)`` is the ``import_path`` of every application ``ray_config``
writes; ``args`` are that module's: the base model's weights, the add-ons
placed on the deployment, the engine (Firebox's local engine, or vLLM where it
is installed on the GPU nodes). A replica loads the engine in its constructor,
so Serve reports it ``RUNNING`` (and the gateway bills it) only once it can
serve. Requests are answered by ``ReplicaServer`` (the OpenAI API).

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
    for addon in args.get("addons") or ():
        engine.register_adapter(str(addon["name"]), str(addon["path"]))
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
    addons = args.get("addons") or ()
    if addons:
        command += ["--enable-lora", "--lora-modules"]
        command += [f"{addon['name']}={addon['path']}" for addon in addons]
    process = subprocess.Popen(command)
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
        addons = {str(addon["name"]) for addon in args.get("addons") or ()}
        self._server = ReplicaServer(
            engine,
            str(args["model"]),
            addons,
            token_interval_s=float(args.get("token_interval_s") or 0.0),
            aliases=frozenset({str(args["deployment"])}),
        )
        log.info("replica of %s ready (revision %s)", args["deployment"], args.get("revision"))

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
