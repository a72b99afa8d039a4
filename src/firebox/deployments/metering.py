"""GPU-seconds: from replica lifetimes to usage records in the ledger (SPEC §2).

A replica is billed from the moment the driver reports it ready until it
is no longer reported, ``acceleratorCount`` GPUs at the GPU-hour price of
its type; nothing while it boots or while the deployment is at zero.

Time is cut in fixed intervals aligned on the epoch (``interval_s``, a
minute by default, which divides every hour, so an interval never straddles
a month). Each observation charges every interval of every running replica
that has ended since the last one: one usage record per (replica,
interval), whose ``request_id`` — ``gpu:<replica>:<interval start>`` — is
the ledger's idempotency key. The interval in which a replica stops is
charged for its part when the replica is first seen gone. Two controllers
(gateway replicas, a restarted gateway re-observing Ray replicas that kept
running) therefore write the same ids, and the ledger keeps one of each: no
double billing. Usage is in the ledger at least once an interval while a
replica runs, so month-to-date and the spend limit see it live.

``SpendWatch`` applies the spend limit ahead: an account whose running
replicas' next interval would take it past its cap (the serverless rule of
``limits.spend_guard.spend_cap``: the spend limit, or the credits left
without a payment method) is suspended with the reason serverless would
get; the suspension hook then scales its deployments to zero.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from firebox.clock import Clock
from firebox.deployments.accelerators import gpu_type
from firebox.deployments.drivers.base import (
    DeploymentObservation,
    DeploymentTarget,
    ReplicaState,
)
from firebox.inference.metering import UsageRecord, UsageSink
from firebox.money_state import SpendState, period_of

log = logging.getLogger("firebox.deployments")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BILLED = (ReplicaState.READY, ReplicaState.STOPPING)


def gpu_price_check(money: Money, clock: Clock) -> Callable[[str, str], None]:
    """A check that prices a zero-length GPU interval for the account (raises if unpriced).

    It goes through the same pricing as the meter, so account overrides count.
    """

    def check(account_id: str, accelerator_type: str) -> None:
        money.cost(
            UsageRecord(
                request_id="price-check",
                account_id=account_id,
                model="",
                base_model="",
                kind="deployment",
                time=clock.now(),
                prompt_tokens=0,
                completion_tokens=0,
                gpu_type=gpu_type(accelerator_type),
                gpu_milliseconds=0,
            )
        )

    return check


@dataclass(frozen=True, slots=True)
class BilledDeployment:
    """What a replica's charge needs of its deployment (kept once seen, for stopped ones)."""

    name: str
    account_id: str
    base_model: str
    accelerator_type: str
    accelerator_count: int

    @classmethod
    def of(cls, target: DeploymentTarget) -> BilledDeployment:
        base = target.base_model.base_model or target.base_model.name
        return cls(
            target.name,
            target.account_id,
            base,
            target.accelerator_type,
            target.accelerator_count,
        )


@dataclass(slots=True)
class _Open:
    deployment: BilledDeployment
    ready_since: datetime
    billed_until: datetime  # charged up to here (an interval boundary, or ready_since)


def _ms(delta: timedelta) -> int:
    return max(int(delta / timedelta(milliseconds=1)), 0)


class GpuMeter:
    """Turns successive driver observations into per-interval GPU usage records."""

    def __init__(self, sink: UsageSink, interval_s: int = 60) -> None:
        if interval_s <= 0 or 3600 % interval_s:
            raise ValueError("the metering interval must divide an hour")
        self._sink = sink
        self._interval = timedelta(seconds=interval_s)
        self._open: dict[str, _Open] = {}
        self._known: dict[str, BilledDeployment] = {}

    def _bucket_start(self, when: datetime) -> datetime:
        offset = (when - _EPOCH) // self._interval
        return _EPOCH + offset * self._interval

    def running(self) -> dict[str, list[tuple[BilledDeployment, datetime]]]:
        """The replicas being billed now, by account: (deployment, charged up to)."""
        by_account: dict[str, list[tuple[BilledDeployment, datetime]]] = {}
        for entry in self._open.values():
            by_account.setdefault(entry.deployment.account_id, []).append(
                (entry.deployment, entry.billed_until)
            )
        return by_account

    def observe(
        self,
        targets: Mapping[str, DeploymentTarget],
        observations: Mapping[str, DeploymentObservation],
        now: datetime,
    ) -> list[UsageRecord]:
        """Charge what ran up to ``now``; returns the records handed to the sink."""
        for name, target in targets.items():
            self._known[name] = BilledDeployment.of(target)
        seen: set[str] = set()
        for name, observed in observations.items():
            deployment = self._known.get(name)
            if deployment is None:
                continue  # not ours (never in a desired set this process saw)
            for replica in observed.replicas:
                if replica.state not in _BILLED or replica.ready_since is None:
                    continue
                seen.add(replica.replica_id)
                if replica.replica_id not in self._open:
                    ready = replica.ready_since.astimezone(UTC)
                    self._open[replica.replica_id] = _Open(deployment, ready, ready)
        records: list[UsageRecord] = []
        for replica_id in list(self._open):
            entry = self._open[replica_id]
            if replica_id in seen:
                records.extend(self._charge(replica_id, entry, now, final=False))
            else:
                records.extend(self._charge(replica_id, entry, now, final=True))
                del self._open[replica_id]
        for record in records:
            try:
                self._sink.record(record)
            except Exception:  # the ledger's ingest never raises; another sink might
                log.exception("GPU usage %s was not recorded", record.request_id)
        return records

    def close_all(self, now: datetime) -> list[UsageRecord]:
        """Charge every open replica up to ``now`` as stopped (the driver stopped them all)."""
        return self.observe({}, {}, now)

    def _charge(
        self, replica_id: str, entry: _Open, now: datetime, final: bool
    ) -> list[UsageRecord]:
        records = []
        start = entry.billed_until
        while start < now:
            bucket = self._bucket_start(start)
            end = bucket + self._interval
            if end > now:
                if not final:
                    break
                end = now
            records.append(self._record(replica_id, entry.deployment, bucket, start, end))
            start = end
        entry.billed_until = start
        return records

    def _record(
        self,
        replica_id: str,
        deployment: BilledDeployment,
        bucket: datetime,
        start: datetime,
        end: datetime,
    ) -> UsageRecord:
        ms = _ms(end - start)
        key = int((bucket - _EPOCH).total_seconds())
        return UsageRecord(
            request_id=f"gpu:{replica_id}:{key}",
            account_id=deployment.account_id,
            model=deployment.name,  # invoices and usage by model show each deployment's GPU time
            base_model=deployment.base_model,
            kind="deployment",
            time=start,
            prompt_tokens=0,
            completion_tokens=0,
            deployment=deployment.name,
            duration_ms=float(ms),
            gpu_type=gpu_type(deployment.accelerator_type),
            gpu_milliseconds=ms * deployment.accelerator_count,
        )

    def next_interval_record(
        self, deployment: BilledDeployment, replicas: int, now: datetime
    ) -> UsageRecord:
        """A record of ``replicas`` running one whole interval from ``now`` (for projections)."""
        ms = _ms(self._interval) * replicas * deployment.accelerator_count
        return UsageRecord(
            request_id="projection",
            account_id=deployment.account_id,
            model=deployment.base_model,
            base_model=deployment.base_model,
            kind="deployment",
            time=now,
            prompt_tokens=0,
            completion_tokens=0,
            deployment=deployment.name,
            gpu_type=gpu_type(deployment.accelerator_type),
            gpu_milliseconds=ms,
        )


class Money(Protocol):
    """Billing as the spend watch sees it (``BillingService`` fits)."""

    def spend_state(self, account_id: str) -> SpendState: ...

    def cost(self, usage: UsageRecord) -> int: ...


Cap = Callable[[SpendState, str], tuple[int | None, str]]
"""``limits.spend_guard.spend_cap``: the month's cap and the reason to raise past it."""

Suspend = Callable[[str, str, str, str], None]
"""``suspend(account_id, reason, detail, period)``: raise a suspension reason."""


class SpendWatch:
    """Suspends an account before its running replicas' next interval passes its cap."""

    def __init__(self, meter: GpuMeter, money: Money, cap: Cap, suspend: Suspend) -> None:
        self._meter = meter
        self._money = money
        self._cap = cap
        self._suspend = suspend

    def check(self, now: datetime, accounts: Iterable[str] | None = None) -> list[str]:
        """Accounts suspended by this check (blocking: reads the ledger)."""
        running = self._meter.running()
        suspended = []
        for account_id in accounts if accounts is not None else list(running):
            replicas = running.get(account_id)
            if not replicas:
                continue
            try:
                if self._over(account_id, replicas, now):
                    suspended.append(account_id)
            except Exception:
                log.exception("the spend check of %s's deployments failed", account_id)
        return suspended

    def _over(
        self, account_id: str, replicas: list[tuple[BilledDeployment, datetime]], now: datetime
    ) -> bool:
        period = period_of(now)
        state = self._money.spend_state(account_id)
        cap, reason = self._cap(state, period)
        if cap is None:
            return False
        usage = state.period_usage_micros if state.period == period else 0
        ahead = 0  # accrued but not yet in the ledger, plus the next interval
        for deployment, billed_until in replicas:
            record = self._meter.next_interval_record(deployment, 1, now)
            whole = self._money.cost(record)
            ahead += whole
            accrued_ms = _ms(now - billed_until) * deployment.accelerator_count
            if record.gpu_milliseconds and accrued_ms:
                ahead += math.ceil(whole * accrued_ms / record.gpu_milliseconds)
        if usage + ahead <= cap:
            return False
        detail = (
            f"the running deployments' next interval would take the month's usage past "
            f"its cap ({usage + ahead} > {cap} micro-USD); they are scaled to zero"
        )
        log.info("suspending %s: %s", account_id, detail)
        self._suspend(account_id, reason, detail, period)
        return True
