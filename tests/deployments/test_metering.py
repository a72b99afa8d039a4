"""GPU-second metering over a fake clock: intervals, idempotent ids, prices, the spend watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from firebox.billing.overrides import NoOverrides
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer
from firebox.clock import FakeClock
from firebox.deployments.accelerators import gpu_type as gpu_type_of
from firebox.deployments.drivers.base import (
    DeploymentObservation,
    ReplicaObservation,
    ReplicaState,
)
from firebox.deployments.metering import GpuMeter, SpendWatch
from firebox.inference.metering import CollectingUsageSink, UsageRecord
from firebox.limits.spend_guard import spend_cap
from firebox.money_state import SpendState

from .support import target

T0 = datetime(2026, 3, 1, 12, 0, 20, tzinfo=UTC)  # 20 s into a minute


def seen(name: str, *replicas: ReplicaObservation) -> dict[str, DeploymentObservation]:
    return {name: DeploymentObservation(name=name, replicas=replicas)}


def ready(replica_id: str, since: datetime) -> ReplicaObservation:
    return ReplicaObservation(replica_id, ReplicaState.READY, since)


def total_ms(records: list[UsageRecord]) -> int:
    return sum(r.gpu_milliseconds for r in records)


def test_replica_time_is_charged_per_interval_times_accelerators() -> None:
    clock = FakeClock(T0)
    sink = CollectingUsageSink()
    meter = GpuMeter(sink, interval_s=60)
    t = target(accelerator_count=2)
    targets = {t.name: t}
    booting = ReplicaObservation("r1", ReplicaState.STARTING, None)
    assert meter.observe(targets, seen(t.name, booting), clock.now()) == []  # booting: nothing
    clock.advance(timedelta(seconds=30))
    since = clock.now()  # ready at 12:00:50
    assert meter.observe(targets, seen(t.name, ready("r1", since)), clock.now()) == []
    clock.advance(timedelta(seconds=15))  # 12:01:05: the interval 12:00 ended
    first = meter.observe(targets, seen(t.name, ready("r1", since)), clock.now())
    assert [(r.request_id, r.gpu_milliseconds) for r in first] == [
        (f"gpu:r1:{int(datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp())}", 10_000 * 2)
    ]
    assert first[0].kind == "deployment" and first[0].deployment == t.name
    assert first[0].gpu_type == "A100_80GB" and first[0].account_id == "acme"
    clock.advance(timedelta(minutes=2, seconds=30))  # 12:03:35
    more = meter.observe(targets, seen(t.name, ready("r1", since)), clock.now())
    assert [r.gpu_milliseconds for r in more] == [120_000, 120_000]  # 12:01 and 12:02, whole
    clock.advance(timedelta(seconds=5))  # 12:03:40: gone
    last = meter.observe(targets, seen(t.name), clock.now())
    assert [r.gpu_milliseconds for r in last] == [40_000 * 2]
    records = sink.records()
    assert total_ms(records) == 2 * int((clock.now() - since).total_seconds() * 1000)
    assert len({r.request_id for r in records}) == len(records)
    assert meter.observe(targets, seen(t.name), clock.now() + timedelta(minutes=5)) == []


def test_a_restarted_meter_writes_the_same_ids_so_the_ledger_keeps_one() -> None:
    t = target()
    since = T0
    obs = seen(t.name, ready("r9", since))
    first, second = CollectingUsageSink(), CollectingUsageSink()
    a, b = GpuMeter(first), GpuMeter(second)
    a.observe({t.name: t}, obs, T0 + timedelta(minutes=3))
    # A second controller (or this one after a restart) sees the same replica later.
    b.observe({t.name: t}, obs, T0 + timedelta(minutes=4, seconds=1))
    ids_a = {r.request_id: r.gpu_milliseconds for r in first.records()}
    ids_b = {r.request_id: r.gpu_milliseconds for r in second.records()}
    assert set(ids_a) < set(ids_b)
    assert all(ids_b[k] == v for k, v in ids_a.items())  # same interval, same charge


def test_the_price_is_accelerators_times_the_gpu_hour() -> None:
    pricer = Pricer(PriceBook.load(), NoOverrides())
    sink = CollectingUsageSink()
    meter = GpuMeter(sink, interval_s=60)
    t = target(accelerator_count=2)
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    meter.observe({t.name: t}, seen(t.name, ready("r1", start)), start)
    meter.observe({t.name: t}, seen(t.name), start + timedelta(hours=1))
    records = sink.records()
    assert len(records) == 60
    # 2 GPUs x $3.89 x 1 h, each interval rounded half-even to the micro-dollar on its own.
    assert abs(sum(pricer.cost(r) for r in records) - 2 * 3_890_000) <= len(records) // 2
    assert gpu_type_of("NVIDIA_H100_80GB") == "H100_80GB"


def test_an_interval_must_divide_an_hour() -> None:
    with pytest.raises(ValueError):
        GpuMeter(CollectingUsageSink(), interval_s=7)


class _Money:
    def __init__(self, usage: int, limit: int | None) -> None:
        self.usage, self.limit = usage, limit
        self.pricer = Pricer(PriceBook.load(), NoOverrides())

    def spend_state(self, account_id: str) -> SpendState:
        return SpendState(account_id, "2026-03", self.usage, self.limit, 0, True, False)

    def cost(self, usage: UsageRecord) -> int:
        return self.pricer.cost(usage)


def test_the_spend_watch_suspends_before_the_next_interval_passes_the_limit() -> None:
    meter = GpuMeter(CollectingUsageSink(), interval_s=60)
    t = target(accelerator_count=8)  # 8 x $3.89/h: $0.518667 a minute
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    meter.observe({t.name: t}, seen(t.name, ready("r1", start)), start)
    raised: list[tuple[str, str, str, str]] = []

    def suspend(account: str, reason: str, detail: str, period: str) -> None:
        raised.append((account, reason, detail, period))

    room = SpendWatch(meter, _Money(usage=10_000_000, limit=11_000_000), spend_cap, suspend)
    assert room.check(start) == []  # $10 used, $0.52 ahead, $11 limit
    tight = SpendWatch(meter, _Money(usage=10_500_000, limit=11_000_000), spend_cap, suspend)
    assert tight.check(start) == ["acme"]
    assert raised[0][0] == "acme" and raised[0][1] == "MONTHLY_SPEND_LIMIT_EXCEEDED"
    assert raised[0][3] == "2026-03"
    unlimited = SpendWatch(meter, _Money(usage=10**12, limit=None), spend_cap, suspend)
    assert unlimited.check(start) == []
