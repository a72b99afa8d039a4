"""The one interface every deployment driver implements, and the values it exchanges.

The control plane (``deployments/service.py`` and its controller) owns the
desired state in the database; a driver only makes the running world match
it and reports what runs. The exchange is declarative on purpose: ``apply``
takes the whole desired set every time, as Ray Serve's
``PUT /api/serve/applications/`` does, so a gateway restart, a lost call or
two replicas applying the same set converge instead of drifting, and
anything running that the set does not name is stopped (no orphans).

Replica lifetimes are what GPU-seconds are billed on (SPEC §2: from ready to
stopped, nothing while booting), so ``observe`` reports each replica with a
stable id and the moment it became ready; the meter keys its idempotent
charges on (replica id, interval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from firebox.catalog.index import ResolvedModel
from firebox.inference.engine import TextEngine


class ReplicaState(StrEnum):
    """Where one replica is in its life; only ``READY`` replicas are billed."""

    STARTING = "STARTING"  # scheduled, loading weights, warming up
    READY = "READY"  # serving traffic
    STOPPING = "STOPPING"  # draining; no longer billed once the driver reports it gone


@dataclass(frozen=True, slots=True)
class AutoscalingTarget:
    """The autoscaling fields of a deployment, in the units drivers use (seconds)."""

    min_replicas: int
    max_replicas: int
    scale_up_window_s: float
    scale_down_window_s: float
    scale_to_zero_window_s: float
    target_ongoing_requests: float  # per replica; from ``loadTargets``


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    """One deployment as the database wants it running now."""

    name: str  # accounts/{a}/deployments/{id}
    account_id: str
    deployment_id: str
    base_model: ResolvedModel  # the base model, with its engine binding
    addons: tuple[ResolvedModel, ...]  # LoRA add-ons placed on it (``enableAddons``)
    accelerator_type: str  # e.g. NVIDIA_A100_80GB
    accelerator_count: int  # per replica
    autoscaling: AutoscalingTarget
    # Set when something overrides autoscaling: ``:scale`` (an explicit count) or a
    # suspension (0). None lets the driver scale between min and max on load.
    fixed_replicas: int | None
    max_context_length: int | None
    revision: int  # bumps on every change of the spec, so drivers can roll replicas


@dataclass(frozen=True, slots=True)
class ReplicaObservation:
    """One replica as the driver sees it."""

    replica_id: str  # unique over the replica's whole life (never reused)
    state: ReplicaState
    ready_since: datetime | None  # when it became READY (UTC); None before


@dataclass(frozen=True, slots=True)
class DeploymentObservation:
    """What runs for one deployment."""

    name: str
    replicas: tuple[ReplicaObservation, ...] = ()
    # Why the driver cannot run it as asked (no capacity for the accelerators,
    # the engine failed to start); None while all is well or merely starting.
    failure: str | None = None
    ongoing_requests: float = 0.0
    observed_at: datetime | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


class DeploymentDriver(Protocol):
    """Runs replicas for deployments. Implementations: local, ray_serve."""

    kind: str

    async def apply(self, targets: Sequence[DeploymentTarget]) -> None:
        """Make what runs match ``targets`` exactly; stop anything not named. Idempotent."""
        ...

    async def observe(self) -> Mapping[str, DeploymentObservation]:
        """Every deployment the driver runs (or failed to run), by name."""
        ...

    def engine(self, name: str) -> TextEngine:
        """The engine that sends a request to deployment ``name``'s replicas.

        A deployment scaled to zero is woken by the request; the engine waits
        for a replica (bounded) rather than failing.
        """
        ...

    async def capacity(self) -> Mapping[str, int]:
        """Accelerators the cluster has, by type (what may be scheduled at all)."""
        ...

    async def close(self) -> None:
        """Stop the driver's own resources (not necessarily the replicas; see docs)."""
        ...
