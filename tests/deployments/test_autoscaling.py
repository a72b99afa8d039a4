"""The autoscaling policy, a pure function: windows, floors, wake, fixed counts."""

from __future__ import annotations

from firebox.deployments.autoscaling import Decision, ScalerState, decide, wanted
from firebox.deployments.drivers.base import AutoscalingTarget


def policy(**kw: float) -> AutoscalingTarget:
    fields: dict[str, float] = {
        "min_replicas": 0,
        "max_replicas": 3,
        "scale_up_window_s": 30,
        "scale_down_window_s": 60,
        "scale_to_zero_window_s": 300,
        "target_ongoing_requests": 2,
    }
    fields.update(kw)
    return AutoscalingTarget(
        min_replicas=int(fields["min_replicas"]),
        max_replicas=int(fields["max_replicas"]),
        scale_up_window_s=fields["scale_up_window_s"],
        scale_down_window_s=fields["scale_down_window_s"],
        scale_to_zero_window_s=fields["scale_to_zero_window_s"],
        target_ongoing_requests=fields["target_ongoing_requests"],
    )


def run(p: AutoscalingTarget, steps: list[tuple[float, float]], current: int) -> list[Decision]:
    """Feed (time, load) pairs, carrying the count and the state; the decisions made."""
    state = ScalerState()
    out = []
    for now, load in steps:
        decision = decide(p, current, load, now, state)
        state, current = decision.state, decision.replicas
        out.append(decision)
    return out


def test_wanted_is_load_over_target_clamped() -> None:
    p = policy(min_replicas=1, max_replicas=3, target_ongoing_requests=2)
    assert [wanted(p, load) for load in (0, 1, 2, 3, 4, 5, 100)] == [1, 1, 1, 2, 2, 3, 3]
    assert wanted(policy(), 0) == 0
    assert wanted(policy(target_ongoing_requests=0), 1) == 1  # a zero target counts as one


def test_a_request_at_zero_wakes_one_replica_at_once() -> None:
    decision = decide(policy(), 0, 1, 0.0, ScalerState())
    assert (decision.replicas, decision.reason) == (1, "wake")


def test_idle_at_zero_stays_at_zero_and_min_replicas_start_without_load() -> None:
    assert decide(policy(), 0, 0, 0.0, ScalerState()).replicas == 0
    assert decide(policy(min_replicas=2), 0, 0, 0.0, ScalerState()).replicas == 2


def test_scale_up_waits_for_the_up_window_without_a_break() -> None:
    p = policy(scale_up_window_s=30)
    decisions = run(p, [(0, 5), (10, 5), (20, 1), (25, 5), (54, 5), (55, 5)], current=1)
    # The dip at t=20 restarts the window: more replicas only at 25 + 30.
    assert [d.replicas for d in decisions] == [1, 1, 1, 1, 1, 3]
    assert decisions[-1].reason == "scale_up"


def test_scale_down_waits_for_the_down_window_and_never_below_min() -> None:
    p = policy(min_replicas=1, scale_down_window_s=60)
    decisions = run(p, [(0, 1), (59, 1), (60, 1)], current=3)
    assert [d.replicas for d in decisions] == [3, 3, 1]


def test_scale_to_zero_after_the_idle_window_only_when_min_is_zero() -> None:
    p = policy(scale_down_window_s=10, scale_to_zero_window_s=100)
    decisions = run(p, [(0, 0), (50, 0), (99, 0), (100, 0)], current=2)
    # Idle: down to one after the down window, to zero after the idle window.
    assert [d.replicas for d in decisions] == [2, 1, 1, 0]
    assert decisions[-1].reason == "scale_to_zero"
    floor = run(policy(min_replicas=1, scale_to_zero_window_s=1), [(0, 0), (1000, 0)], current=1)
    assert [d.replicas for d in floor] == [1, 1]


def test_a_request_restarts_the_idle_window() -> None:
    p = policy(scale_to_zero_window_s=100)
    decisions = run(p, [(0, 0), (90, 1), (91, 0), (180, 0), (191, 0)], current=1)
    assert [d.replicas for d in decisions] == [1, 1, 1, 1, 0]


def test_a_fixed_count_overrides_the_policy() -> None:
    decision = decide(policy(), 3, 100, 0.0, ScalerState(), fixed=0)
    assert (decision.replicas, decision.reason) == (0, "fixed")
    assert decide(policy(max_replicas=1), 0, 0, 0.0, ScalerState(), fixed=2).replicas == 2
