"""The Ray Serve driver as the settings describe it (``FIREBOX_DEPLOYMENT_DRIVER=ray_serve``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from firebox.clock import Clock
from firebox.deployments.drivers.ray_config import DEFAULT_RAY_ACCELERATORS, RayServeOptions
from firebox.deployments.drivers.ray_rest import RayDashboard
from firebox.deployments.drivers.ray_serve import RayServeDriver
from firebox.settings import Settings


def parse_accelerators(text: str) -> dict[str, str]:
    """``NVIDIA_A100_80GB=A100-80G,...`` over the built-in table."""
    table = dict(DEFAULT_RAY_ACCELERATORS)
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, ray_name = item.partition("=")
        if not sep or not name.strip() or not ray_name.strip():
            raise ValueError(f"FIREBOX_RAY_ACCELERATORS: {item!r} is not TYPE=RAYNAME")
        table[name.strip()] = ray_name.strip()
    return table


def serve_url(settings: Settings) -> str:
    """Where the gateway reaches the Serve proxy."""
    if settings.ray_serve_url:
        return settings.ray_serve_url
    host = urlsplit(settings.ray_dashboard_url).hostname or "127.0.0.1"
    return f"http://{host}:{settings.ray_serve_port}"


def ray_serve_driver(settings: Settings, clock: Clock) -> RayServeDriver:
    options = RayServeOptions(
        http_host=settings.ray_serve_host,
        http_port=settings.ray_serve_port,
        proxy_location=settings.ray_proxy_location,
        engine=settings.ray_engine,
        models_dir=settings.ray_models_dir or str(settings.models_dir),
        accelerators=parse_accelerators(settings.ray_accelerators),
        max_queued_requests=settings.deployment_queue_limit,
        max_ongoing_requests=settings.ray_max_ongoing_requests,
        engine_threads=settings.deployment_replica_threads,
    )
    return RayServeDriver(
        RayDashboard(settings.ray_dashboard_url, token=settings.ray_token),
        serve_url(settings),
        options,
        max_in_flight=settings.deployment_queue_limit + 16 * settings.ray_max_ongoing_requests,
        request_timeout_s=settings.deployment_wake_timeout_s,
        clock=clock,
    )
