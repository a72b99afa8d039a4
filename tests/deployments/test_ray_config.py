"""The Ray Serve config the driver applies, and the capacity check (no cluster needed)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest

from firebox.deployments.drivers.ray_config import (
    APP_IMPORT_PATH,
    RayServeOptions,
    app_name,
    ray_accelerator,
    route_prefix,
    serve_config,
)
from firebox.deployments.drivers.ray_serve import capacity_by_type, capacity_failure

from .support import TINY_LORA, target, tiny_lora

OPTIONS = RayServeOptions(http_host="127.0.0.1", http_port=8123, models_dir="/srv/models")


def test_one_application_per_deployment_with_its_gpus_and_accelerator_type() -> None:
    t = target(
        "d1",
        "acme",
        accelerator_type="NVIDIA_H100_80GB",
        accelerator_count=2,
        min_replicas=1,
        max_replicas=3,
        scale_up_window_s=30,
        scale_down_window_s=600,
        scale_to_zero_window_s=3600,
        target_ongoing_requests=4,
        addons=(tiny_lora(),),
        revision=7,
    )
    config = serve_config([t], OPTIONS)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = config["applications"]
    assert app["name"] == "acme.d1" and app["route_prefix"] == "/acme/d1"
    assert app["import_path"] == APP_IMPORT_PATH
    assert app["args"]["deployment"] == "accounts/acme/deployments/d1"
    assert app["args"]["revision"] == 7
    assert app["args"]["weights"] == "/srv/models/firebox-tiny"
    (deployment,) = app["deployments"]
    assert deployment["user_config"] == {
        "addons": [{"name": TINY_LORA, "path": "/srv/models/firebox-tiny-lora"}]
    }
    assert "addons" not in app["args"]  # a new add-on never rebuilds the application
    assert deployment["ray_actor_options"] == {
        "num_cpus": 0.0,
        "num_gpus": 2,
        "accelerator_type": "H100",
    }
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
        "downscale_to_zero_delay_s": 3600.0,
    }
    assert deployment["max_queued_requests"] == OPTIONS.max_queued_requests
    assert deployment["backpressure_config"]["retry_after_s"] == OPTIONS.retry_after_s


def test_a_fixed_count_replaces_autoscaling_and_a_fixed_zero_leaves_the_app_out() -> None:
    fixed = target("f", fixed_replicas=3)
    zero = target("z", fixed_replicas=0)
    config = serve_config([zero, fixed], OPTIONS)
    (app,) = config["applications"]
    (deployment,) = app["deployments"]
    assert app["name"] == "acme.f"
    assert deployment["num_replicas"] == 3 and "autoscaling_config" not in deployment


def test_the_config_is_deterministic_and_ordered_by_name() -> None:
    a, b = target("a"), target("b")
    assert serve_config([b, a], OPTIONS) == serve_config([a, b], OPTIONS)
    assert [app["name"] for app in serve_config([b, a], OPTIONS)["applications"]] == [
        "acme.a",
        "acme.b",
    ]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")
def test_serve_accepts_the_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    targets = [target("a", max_replicas=4), target("b", fixed_replicas=2)]
    ServeDeploySchema.model_validate(serve_config(targets, OPTIONS))  # raises if invalid
    fast = replace(OPTIONS, look_back_period_s=1.0)
    (app, _) = serve_config(targets, fast)["applications"]
    assert app["deployments"][0]["autoscaling_config"]["look_back_period_s"] == 1.0


def test_names_and_accelerators() -> None:
    assert app_name("accounts/a-b/deployments/c") == "a-b.c"
    assert route_prefix("accounts/a-b/deployments/c") == "/a-b/c"
    with pytest.raises(ValueError):
        app_name("accounts/a/models/m")
    table = OPTIONS.accelerators
    assert ray_accelerator("NVIDIA_A100_80GB", table) == "A100"
    assert ray_accelerator("NVIDIA_RTX_6000_48GB", table) == "RTX-6000"
    assert ray_accelerator("TPU_V5", table) == "TPU_V5"


NODES = [
    {"resources_total": {"CPU": 8, "GPU": 8, "accelerator_type:A100": 1}},
    {"resources_total": {"CPU": 8, "GPU": 4, "accelerator_type:A100": 1}},
    {"resources_total": {"CPU": 8}},
]


def test_capacity_is_counted_per_type_and_per_node() -> None:
    total, largest = capacity_by_type(NODES)
    assert total == {"A100": 12} and largest == {"A100": 8}
    ok = target(accelerator_count=8, min_replicas=1)
    assert capacity_failure(ok, OPTIONS, total, largest) is None
    too_big = target(accelerator_count=9)
    reason = capacity_failure(too_big, OPTIONS, total, largest)
    assert reason is not None and "9 NVIDIA_A100_80GB" in reason and "8" in reason
    too_many = target(accelerator_count=4, min_replicas=4, max_replicas=4)
    reason = capacity_failure(too_many, OPTIONS, total, largest)
    assert reason is not None and "16" in reason and "12" in reason
    h100 = target(accelerator_type="NVIDIA_H100_80GB")
    assert capacity_failure(h100, OPTIONS, total, largest) is not None
    # a fixed count is what must fit; at zero nothing must
    assert capacity_failure(replace(too_many, fixed_replicas=0), OPTIONS, total, largest) is None
