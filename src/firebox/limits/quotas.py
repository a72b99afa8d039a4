"""Quotas per account (SPEC §5): deployed models, A100 and H100 GPUs, serverless requests/min.

A quota's value is the plan's default until the operator sets one
(``quotas.value``); its usage moves only through ``claim`` and ``release``,
which the slice that creates the resource calls inside its own transaction.
``claim`` locks the quota row, so two concurrent creations cannot both take
the last free unit.

``serverless-requests-per-minute`` is the account's rate limit seen as a
quota: its value is the effective requests/min (``plans``), its usage the
requests counted in the current window, and setting it sets the account's
rate limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from anyio import to_thread
from sqlalchemy.orm import Session

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission, Plan
from firebox.clock import Clock
from firebox.errors import FailedPrecondition, InvalidArgument, NotFound
from firebox.limits import quota_repository as repo
from firebox.limits.plans import (
    PlanLimits,
    account_not_found,
    actor_of,
    plan_requests_per_minute,
)
from firebox.limits.rate_limiter import RateLimiter, requests_key
from firebox.limits.schemas import Quota, QuotaList
from firebox.store.database import Database

DEPLOYED_MODELS = "deployed-models"
A100_GPUS = "a100-gpus"
H100_GPUS = "h100-gpus"
SERVERLESS_RPM = "serverless-requests-per-minute"


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """One kind of quota: its plan default and whether the operator raises it on a plan."""

    quota_id: str
    display_name: str
    default: Callable[[Plan], int | None]
    can_raise: Callable[[Plan], bool]


def _unlimited_on_enterprise(value: int) -> Callable[[Plan], int | None]:
    return lambda plan: None if plan is Plan.ENTERPRISE else value


SPECS: dict[str, QuotaSpec] = {
    spec.quota_id: spec
    for spec in (
        QuotaSpec(
            DEPLOYED_MODELS,
            "Deployed models",
            _unlimited_on_enterprise(100),
            lambda plan: plan is Plan.BUSINESS,  # Developer: fixed; Enterprise: unlimited
        ),
        QuotaSpec(A100_GPUS, "A100 GPUs", lambda _: 8, lambda _: True),
        QuotaSpec(H100_GPUS, "H100 GPUs", lambda _: 8, lambda _: True),
        QuotaSpec(
            SERVERLESS_RPM,
            "Serverless requests per minute",
            plan_requests_per_minute,
            lambda plan: plan is Plan.BUSINESS,
        ),
    )
}


def spec_of(quota_id: str) -> QuotaSpec:
    spec = SPECS.get(quota_id)
    if spec is None:
        raise NotFound(
            f"Quota {quota_id!r} does not exist; the quotas are {', '.join(SPECS)}.",
            code="quota_not_found",
        )
    return spec


def quota_name(account_id: str, quota_id: str) -> str:
    return f"accounts/{account_id}/quotas/{quota_id}"


@dataclass(frozen=True, slots=True)
class _Stored:
    value: int | None
    usage: int
    update_time: datetime | None


class QuotaService:
    """Shows quotas, lets the operator change them, and claims/releases their units."""

    def __init__(
        self, db: Database, clock: Clock, plans: PlanLimits, rate_limiter: RateLimiter
    ) -> None:
        self._db = db
        self._clock = clock
        self._plans = plans
        self._limiter = rate_limiter

    # -- claims, inside the caller's transaction -------------------------------

    def claim(self, session: Session, account_id: str, quota_id: str, amount: int = 1) -> None:
        """Take ``amount`` units of the quota, or raise ``quota_exceeded`` and take nothing."""
        spec = self._countable(quota_id)
        plan = _plan(session, account_id)
        row = repo.quota_for_update(session, account_id, quota_id, self._clock.now())
        value = row.value if row.value is not None else spec.default(plan)
        if value is not None and row.usage + amount > value:
            raise FailedPrecondition(
                f"Quota {spec.quota_id!r} ({spec.display_name}) of account {account_id!r} "
                f"is {value} and {row.usage} in use; this needs {amount} more. Free some, "
                "or ask the platform operator to raise the quota.",
                code="quota_exceeded",
            )
        row.usage += amount
        row.update_time = self._clock.now()

    def release(self, session: Session, account_id: str, quota_id: str, amount: int = 1) -> None:
        """Give back ``amount`` units (never below zero)."""
        self._countable(quota_id)
        row = repo.quota_for_update(session, account_id, quota_id, self._clock.now())
        row.usage = max(0, row.usage - amount)
        row.update_time = self._clock.now()

    # -- reading and changing ---------------------------------------------------

    async def list(self, principal: Principal, account_id: str) -> QuotaList:
        principal.require(account_id, Permission.ACCOUNT_READ)
        plan, stored = await to_thread.run_sync(self._read, account_id)
        quotas = [await self._view(account_id, plan, spec, stored) for spec in SPECS.values()]
        return QuotaList(quotas=quotas, total_size=len(quotas))

    async def get(self, principal: Principal, account_id: str, quota_id: str) -> Quota:
        principal.require(account_id, Permission.ACCOUNT_READ)
        spec = spec_of(quota_id)
        plan, stored = await to_thread.run_sync(self._read, account_id)
        return await self._view(account_id, plan, spec, stored)

    async def update(
        self, principal: Principal, account_id: str, quota_id: str, value: int | None
    ) -> Quota:
        """Set the quota's value (operator only); ``None`` returns it to the plan's default."""
        principal.require_operator()
        spec = spec_of(quota_id)
        if spec.quota_id == SERVERLESS_RPM:
            await to_thread.run_sync(
                lambda: self._plans.set_account_limits(principal, account_id, value)
            )
        else:
            await to_thread.run_sync(self._set_value, principal, account_id, quota_id, value)
        return await self.get(principal, account_id, quota_id)

    # -- helpers ------------------------------------------------------------------

    def _countable(self, quota_id: str) -> QuotaSpec:
        spec = spec_of(quota_id)
        if spec.quota_id == SERVERLESS_RPM:
            raise InvalidArgument(
                f"Quota {quota_id!r} is a rate, not a count: it cannot be claimed.",
                code="quota_not_claimable",
            )
        return spec

    def _read(self, account_id: str) -> tuple[Plan, dict[str, _Stored]]:
        with self._db.transaction() as session:
            plan = _plan(session, account_id)
            rows = repo.list_quotas(session, account_id)
            stored = {r.quota_id: _Stored(r.value, r.usage, r.update_time) for r in rows}
        limits = self._plans.load(account_id)
        stored[SERVERLESS_RPM] = _Stored(
            limits.requests_per_minute if limits.requests_override else None, 0, None
        )
        return plan, stored

    async def _view(
        self, account_id: str, plan: Plan, spec: QuotaSpec, stored: dict[str, _Stored]
    ) -> Quota:
        own = stored.get(spec.quota_id, _Stored(None, 0, None))
        usage = own.usage
        if spec.quota_id == SERVERLESS_RPM:
            usage = await self._limiter.used(requests_key(account_id))
        return Quota(
            name=quota_name(account_id, spec.quota_id),
            display_name=spec.display_name,
            value=own.value if own.value is not None else spec.default(plan),
            usage=usage,
            can_raise=spec.can_raise(plan),
            update_time=own.update_time,
        )

    def _set_value(
        self, principal: Principal, account_id: str, quota_id: str, value: int | None
    ) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            _plan(session, account_id)
            row = repo.quota_for_update(session, account_id, quota_id, now)
            if row.value == value:
                return
            detail = f"{quota_id}: {_show(row.value)} -> {_show(value)}"
            row.value = value
            row.update_time = now
            repo.add_audit(session, account_id, now, actor_of(principal), "QUOTA_UPDATED", detail)


def _plan(session: Session, account_id: str) -> Plan:
    name = repo.get_plan(session, account_id)
    if name is None:
        raise account_not_found(account_id)
    return Plan(name)


def _show(value: int | None) -> str:
    return "default" if value is None else str(value)
