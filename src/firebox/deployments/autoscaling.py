"""The autoscaling policy: how many replicas a deployment should run now.

A pure function over a deployment's ``AutoscalingTarget`` fields, the load
it sees (requests being served plus requests waiting for a replica), and a
small state that remembers since when the load has pointed one way. Every
driver that scales by itself (``local``) calls it on each tick; the Ray
Serve driver hands the same fields to Serve's own autoscaler, whose rules
this mirrors:

- the load asks for ``ceil(load / target_ongoing_requests)`` replicas,
  clamped to ``[min_replicas, max_replicas]``, and at least one while any
  request is in flight or waiting;
- more replicas are started only after the load has asked for more for
  ``scale_up_window_s`` without a break, fewer only after it has asked for
  fewer for ``scale_down_window_s``; when the window has passed, the count
  moves straight to what the load asks now;
- the last replica goes (scale to zero) only when ``min_replicas`` is 0 and
  nothing has been in flight or waiting for ``scale_to_zero_window_s``;
- a deployment at zero with a request waiting gets one replica at once
  (a cold start never waits for the up window);
- a fixed count (an explicit ``:scale``, or 0 during a suspension) overrides
  all of this.

Times are plain seconds from any monotonic origin, so tests pass numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firebox.deployments.drivers.base import AutoscalingTarget


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the policy remembers between two decisions of one deployment."""

    up_since: float | None = None  # the load has asked for more replicas since then
    down_since: float | None = None  # ... for fewer (but not zero) since then
    idle_since: float | None = None  # nothing in flight or waiting since then


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    state: ScalerState
    reason: str  # "steady", "scale_up", "scale_down", "scale_to_zero", "wake", "fixed"


def wanted(policy: AutoscalingTarget, load: float) -> int:
    """Replicas the load asks for right now, within ``[min, max]`` (before any window)."""
    target = policy.target_ongoing_requests if policy.target_ongoing_requests > 0 else 1.0
    count = math.ceil(load / target - 1e-9) if load > 0 else 0
    if load > 0:
        count = max(count, 1)
    return max(policy.min_replicas, min(policy.max_replicas, count))


def decide(
    policy: AutoscalingTarget,
    current: int,
    load: float,
    now: float,
    state: ScalerState,
    fixed: int | None = None,
) -> Decision:
    """The replica count to run after this tick, and the state for the next one.

    ``current`` is the count the driver runs now (target, not only ready),
    ``load`` the requests in flight plus waiting, ``now`` seconds.
    """
    idle_since = (state.idle_since if state.idle_since is not None else now) if load <= 0 else None
    if fixed is not None:
        return Decision(max(fixed, 0), ScalerState(idle_since=idle_since), "fixed")
    if current == 0:
        if load > 0:  # wake: a request waits for a replica
            return Decision(max(wanted(policy, load), 1), ScalerState(), "wake")
        floor = policy.min_replicas
        return Decision(
            floor, ScalerState(idle_since=idle_since), "scale_up" if floor else "steady"
        )
    ask = wanted(policy, load)
    if ask == 0:
        # Idle: keep the floor of one until the scale-to-zero window has passed.
        assert idle_since is not None
        if now - idle_since >= policy.scale_to_zero_window_s:
            return Decision(0, ScalerState(idle_since=idle_since), "scale_to_zero")
        ask = 1
    if ask > current:
        up_since = state.up_since if state.up_since is not None else now
        if now - up_since >= policy.scale_up_window_s:
            return Decision(ask, ScalerState(idle_since=idle_since), "scale_up")
        return Decision(current, ScalerState(up_since=up_since, idle_since=idle_since), "steady")
    if ask < current:
        down_since = state.down_since if state.down_since is not None else now
        if now - down_since >= policy.scale_down_window_s:
            return Decision(ask, ScalerState(idle_since=idle_since), "scale_down")
        return Decision(
            current, ScalerState(down_since=down_since, idle_since=idle_since), "steady"
        )
    return Decision(current, ScalerState(idle_since=idle_since), "steady")
