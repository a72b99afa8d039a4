"""The Ray Serve config Firebox applies: one Serve application per deployment.

A pure function of the desired deployments (``DeploymentTarget``) and the
operator's options, so it is unit-tested without a cluster and the driver can
compare what it would apply with what it applied last. The result is the body
of ``PUT /api/serve/applications/`` (Serve's ``ServeDeploySchema``); the same
document, as YAML, is what a KubeRay ``RayService`` carries in
``serveConfigV2`` (see docs/operations.md).

Each application:

- is named ``{account}.{deployment}`` and routed at ``/{account}/{deployment}``
  on the Serve proxy, where the replica answers the OpenAI API
  (``/v1/chat/completions``, ``/v1/completions``);
- runs ``firebox.deployments.drivers.ray_app:build``: one Serve deployment
  whose replicas load the base model (and the add-ons placed on it) into
  Firebox's local engine, or vLLM (``engine="vllm"``);
- asks, per replica, ``num_gpus = acceleratorCount`` and Ray's
  ``accelerator_type`` for the Fireworks accelerator name, so Ray places it on
  a node of that type;
- carries the deployment's resource name and revision in its ``args``: the
  driver reads them back from ``GET /api/serve/applications/`` (no state of
  its own to lose on a restart), and a new revision makes Serve roll the
  replicas; the add-ons placed on it are the deployment's ``user_config``,
  which Serve gives the running replicas without restarting them.

Scaling: ``fixed_replicas`` (an explicit ``:scale``) is ``num_replicas``
without autoscaling; ``fixed_replicas == 0`` (scaled to zero by its owner, or
suspended) leaves the application out, since Serve has no fixed zero. Otherwise
Serve's request-based autoscaler runs between min and max replicas with the
deployment's windows (``upscale_delay_s``, ``downscale_delay_s``,
``downscale_to_zero_delay_s``) and ``target_ongoing_requests``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from firebox.catalog.binding import LocalEngine, UpstreamEngine
from firebox.catalog.index import ResolvedModel
from firebox.deployments.drivers.base import DeploymentTarget

APP_IMPORT_PATH = "firebox.deployments.drivers.ray_app:build"
SERVE_DEPLOYMENT = "FireboxReplica"

# Fireworks accelerator names -> Ray's ``accelerator_type`` names (ray.util.accelerators).
DEFAULT_RAY_ACCELERATORS: Mapping[str, str] = {
    "NVIDIA_A100_80GB": "A100",
    "NVIDIA_H100_80GB": "H100",
    "NVIDIA_H200_141GB": "H200",
    "NVIDIA_B200_180GB": "B200",
    "NVIDIA_L4_24GB": "L4",
    "NVIDIA_A10G_24GB": "A10G",
    "AMD_MI300X_192GB": "AMD-Instinct-MI300X-OAM",
}

_VENDOR_AND_MEMORY = re.compile(r"^(?:NVIDIA|AMD|INTEL|GOOGLE)_(?P<model>.+?)(?:_\d+GB)?$")


@dataclass(frozen=True, slots=True)
class RayServeOptions:
    """What the operator decides about the Ray cluster (FIREBOX_RAY_* settings)."""

    http_host: str = "0.0.0.0"  # where the Serve proxy listens on the head node
    http_port: int = 8000
    proxy_location: str = "HeadOnly"  # or "EveryNode" behind a load balancer
    engine: Literal["firebox", "vllm"] = "firebox"
    # Where relative weight paths are, as the Ray nodes see them (the same folder
    # mounted on every node, or baked into the image).
    models_dir: str | None = None
    accelerators: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_RAY_ACCELERATORS))
    # Bounded queue per proxy: beyond it Serve answers at once (429 + Retry-After,
    # which the gateway turns into 503 + Retry-After), never a hang.
    max_queued_requests: int = 64
    retry_after_s: int = 2
    max_ongoing_requests: int = 16  # per replica
    # How often replicas and proxies report load is a cluster setting in Ray 2.60 (the
    # RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S variables of the Ray nodes), not a field.
    look_back_period_s: float | None = None  # Serve's default (30 s) when None
    replica_num_cpus: float = 0.0  # CPUs a replica asks besides its GPUs
    engine_threads: int | None = None  # torch CPU threads of the local engine in a replica
    env_vars: Mapping[str, str] = field(default_factory=dict)  # replicas' runtime_env
    health_check_period_s: float = 2.0
    # Demos, benchmarks and tests on CPU: run every answer to max_tokens (no end-of-sequence
    # stop) and pace streamed tokens, so a small model behaves like a big one under load.
    ignore_eos: bool = False
    token_interval_s: float = 0.0


def app_name(deployment_name: str) -> str:
    """The Serve application of ``accounts/{a}/deployments/{d}``: ``{a}.{d}``."""
    parts = deployment_name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "deployments":
        raise ValueError(f"not a deployment name: {deployment_name!r}")
    return f"{parts[1]}.{parts[3]}"


def route_prefix(deployment_name: str) -> str:
    """Where the Serve proxy routes the deployment: ``/{account}/{deployment}``."""
    account, deployment = app_name(deployment_name).split(".", 1)
    return f"/{account}/{deployment}"


def ray_accelerator(accelerator_type: str, table: Mapping[str, str]) -> str:
    """Ray's name for a Fireworks accelerator type (``NVIDIA_A100_80GB`` -> ``A100``)."""
    known = table.get(accelerator_type)
    if known is not None:
        return known
    match = _VENDOR_AND_MEMORY.match(accelerator_type)
    return match.group("model").replace("_", "-") if match else accelerator_type


def weights_source(model: ResolvedModel, models_dir: str | None) -> str | None:
    """The weights a replica loads for ``model``: a folder, or a hub id for vLLM; None if none."""
    binding = model.engine
    if isinstance(binding, LocalEngine) and binding.path:
        return _under(binding.path, models_dir)
    if isinstance(binding, UpstreamEngine):
        return binding.upstream_model  # vLLM on the GPU nodes loads it by name
    return None


def _under(path: str, models_dir: str | None) -> str:
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or models_dir is None:
        return str(candidate)
    return str(Path(models_dir) / candidate)


def autoscaling_config(target: DeploymentTarget, options: RayServeOptions) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` for the deployment's policy."""
    policy = target.autoscaling
    max_replicas = max(policy.max_replicas, policy.min_replicas, 1)
    config: dict[str, Any] = {
        "min_replicas": policy.min_replicas,
        "initial_replicas": policy.min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": max(policy.target_ongoing_requests, 0.01),
        "upscale_delay_s": policy.scale_up_window_s,
        "downscale_delay_s": policy.scale_down_window_s,
        "downscale_to_zero_delay_s": policy.scale_to_zero_window_s,
    }
    if options.look_back_period_s is not None:
        config["look_back_period_s"] = options.look_back_period_s
    return config


def application(target: DeploymentTarget, options: RayServeOptions) -> dict[str, Any]:
    """The Serve application running ``target`` (``fixed_replicas`` must not be 0)."""
    addons = [
        {
            # the name the gateway sends in ``model`` for the add-on (ModelResolver.ref)
            "name": addon.adapter.upstream_adapter or addon.name,
            "path": _under(addon.adapter.path, options.models_dir),
        }
        for addon in target.addons
        if addon.adapter is not None and addon.adapter.path
    ]
    args: dict[str, Any] = {
        "deployment": target.name,
        "revision": target.revision,
        "model": target.base_model.name,
        "weights": weights_source(target.base_model, options.models_dir),
        "engine": options.engine,
        "max_context_length": target.max_context_length,
        "accelerator_count": target.accelerator_count,
        "engine_threads": options.engine_threads,
        "ignore_eos": options.ignore_eos,
        "token_interval_s": options.token_interval_s,
    }
    actor_options: dict[str, Any] = {
        "num_cpus": options.replica_num_cpus,
        "num_gpus": target.accelerator_count,
        "accelerator_type": ray_accelerator(target.accelerator_type, options.accelerators),
    }
    deployment: dict[str, Any] = {
        "name": SERVE_DEPLOYMENT,
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "backpressure_config": {"status_code": 429, "retry_after_s": options.retry_after_s},
        "health_check_period_s": options.health_check_period_s,
        "ray_actor_options": actor_options,
        # Add-ons change without restarting replicas: Serve hands a new user_config to
        # the running replicas' ``reconfigure`` (a lightweight update, no cold start).
        "user_config": {"addons": addons},
    }
    if target.fixed_replicas is not None:
        deployment["num_replicas"] = target.fixed_replicas
    else:
        deployment["autoscaling_config"] = autoscaling_config(target, options)
    app: dict[str, Any] = {
        "name": app_name(target.name),
        "route_prefix": route_prefix(target.name),
        "import_path": APP_IMPORT_PATH,
        "args": args,
        "deployments": [deployment],
    }
    if options.env_vars:
        app["runtime_env"] = {"env_vars": dict(options.env_vars)}
    return app


def serve_config(targets: Sequence[DeploymentTarget], options: RayServeOptions) -> dict[str, Any]:
    """The whole ``PUT /api/serve/applications/`` body: every deployment that should run."""
    applications = [
        application(target, options)
        for target in sorted(targets, key=lambda t: t.name)
        if target.fixed_replicas != 0
    ]
    return {
        "proxy_location": options.proxy_location,
        "http_options": {"host": options.http_host, "port": options.http_port},
        "applications": applications,
    }
