"""ReplicaPool: least-outstanding balancing and ejection, on a clock moved by hand."""

from __future__ import annotations

import pytest

from firebox.inference.upstream_pool import ReplicaPool

A, B, C = "http://a/v1", "http://b/v1", "http://c/v1"


class StepClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


def make_pool(clock: StepClock, *urls: str) -> ReplicaPool:
    return ReplicaPool(urls or (A, B, C), base_ejection_s=1.0, max_ejection_s=8.0, monotonic=clock)


def test_ties_are_broken_round_robin(clock: StepClock) -> None:
    pool = make_pool(clock)
    picks = []
    for _ in range(6):
        url = pool.acquire()
        assert url is not None
        picks.append(url)
        pool.release(url)
    assert picks == [A, B, C, A, B, C]


def test_the_replica_with_fewest_outstanding_requests_wins(clock: StepClock) -> None:
    pool = make_pool(clock)
    assert [pool.acquire() for _ in range(3)] == [A, B, C]
    assert pool.acquire() == A  # all at one: round robin
    pool.release(B)
    pool.release(C)
    assert pool.acquire() == B  # B and C at zero, A at two
    assert pool.acquire() == C
    assert pool.in_flight(A) == 2 and pool.in_flight(B) == 1 and pool.in_flight(C) == 1


def test_excluded_replicas_are_skipped_and_none_when_all_tried(clock: StepClock) -> None:
    pool = make_pool(clock)
    assert pool.acquire(exclude=[A]) == B
    assert pool.acquire(exclude=[B, C]) == A
    assert pool.acquire(exclude=[A, B, C]) is None


def test_a_failing_replica_is_ejected_for_the_base_period(clock: StepClock) -> None:
    pool = make_pool(clock, A, B)
    pool.record_failure(A)
    assert pool.is_ejected(A)
    assert {pool.acquire() for _ in range(4)} == {B}
    clock.now += 0.99
    assert pool.is_ejected(A)
    clock.now += 0.02
    assert not pool.is_ejected(A)
    assert pool.acquire() == A  # fewest outstanding (B holds four)


def test_ejection_doubles_on_repeated_failures_up_to_the_cap(clock: StepClock) -> None:
    pool = make_pool(clock, A, B)
    periods = []
    for _ in range(6):
        start = clock.now
        pool.record_failure(A)
        while pool.is_ejected(A):
            clock.now += 0.5
        periods.append(clock.now - start)
    assert periods == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_failures_while_ejected_do_not_escalate(clock: StepClock) -> None:
    pool = make_pool(clock, A, B)
    for _ in range(10):  # ten requests in flight when it went down
        pool.record_failure(A)
    clock.now += 1.01
    assert not pool.is_ejected(A)


def test_a_success_forgives_past_failures(clock: StepClock) -> None:
    pool = make_pool(clock, A, B)
    pool.record_failure(A)
    clock.now += 1.5
    pool.record_failure(A)  # 2 s now
    pool.record_success(A)
    assert not pool.is_ejected(A)
    pool.record_failure(A)
    clock.now += 1.01
    assert not pool.is_ejected(A)  # back to the base period


def test_when_all_are_ejected_the_one_due_back_first_is_tried(clock: StepClock) -> None:
    pool = make_pool(clock, A, B)
    pool.record_failure(B)
    clock.now += 0.5
    pool.record_failure(A)
    assert pool.acquire() == B  # due back at 51.0, A at 51.5
    assert pool.acquire(exclude=[B]) == A


def test_release_never_goes_negative(clock: StepClock) -> None:
    pool = make_pool(clock, A)
    pool.release(A)
    assert pool.in_flight(A) == 0


@pytest.mark.parametrize(
    ("urls", "options"),
    [
        ([], {}),
        ([A, A], {}),
        ([A], {"base_ejection_s": 0.0}),
        ([A], {"base_ejection_s": 5.0, "max_ejection_s": 1.0}),
    ],
)
def test_invalid_configurations_are_refused(urls: list[str], options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReplicaPool(urls, **options)
