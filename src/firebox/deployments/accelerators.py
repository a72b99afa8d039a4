"""Accelerator types: which quota each one draws on, its price-book name, and who may use it.

The wire names are the SDK's ``acceleratorType`` values. A100s count against
the ``a100-gpus`` quota and H100s against ``h100-gpus`` (SPEC §5); H100s are
for Enterprise accounts only (SPEC §1). The other types are accepted as names
the operator can price (``gpu_hour`` in the price book, keyed by
``gpu_type``: the wire name without its vendor prefix, ``A100_80GB``).
"""

from __future__ import annotations

from firebox.accounts.roles import Plan

A100_80GB = "NVIDIA_A100_80GB"
H100_80GB = "NVIDIA_H100_80GB"
DEFAULT_TYPE = A100_80GB

ACCELERATOR_TYPES: tuple[str, ...] = (
    "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB",
    "AMD_MI300X_192GB",
    "NVIDIA_A10G_24GB",
    "NVIDIA_A100_40GB",
    "NVIDIA_L4_24GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200_180GB",
    "AMD_MI325X_256GB",
    "AMD_MI350X_288GB",
)

_QUOTAS = {
    "NVIDIA_A100_80GB": "a100-gpus",
    "NVIDIA_A100_40GB": "a100-gpus",
    "NVIDIA_H100_80GB": "h100-gpus",
}

_ENTERPRISE_ONLY = frozenset({"NVIDIA_H100_80GB"})


def quota_of(accelerator_type: str) -> str | None:
    """The quota a replica's accelerators of this type count against, if any."""
    return _QUOTAS.get(accelerator_type)


def gpu_type(accelerator_type: str) -> str:
    """The price book's name of the type (``NVIDIA_A100_80GB`` -> ``A100_80GB``)."""
    for vendor in ("NVIDIA_", "AMD_"):
        if accelerator_type.startswith(vendor):
            return accelerator_type[len(vendor) :]
    return accelerator_type


def allowed_on(accelerator_type: str, plan: Plan) -> bool:
    """Whether an account on ``plan`` may deploy on this type (H100: Enterprise only)."""
    return accelerator_type not in _ENTERPRISE_ONLY or plan is Plan.ENTERPRISE
