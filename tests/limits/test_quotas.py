"""Quota claims: the caller's transaction, exact refusals, and no double-spent last unit."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from firebox.accounts.models import AccountRow
from firebox.clock import FakeClock
from firebox.errors import FailedPrecondition, InvalidArgument, NotFound
from firebox.limits import quota_repository as repo
from firebox.limits.plans import PlanLimits
from firebox.limits.quotas import A100_GPUS, DEPLOYED_MODELS, SERVERLESS_RPM, QuotaService
from firebox.limits.rate_limiter import InProcessRateLimiter
from firebox.store.database import Database

START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def quotas(database: Database) -> QuotaService:
    clock = FakeClock(START)
    with database.transaction() as session:
        for account, plan in (("acme", "BUSINESS"), ("bigco", "ENTERPRISE")):
            session.add(AccountRow(id=account, plan=plan, create_time=START, update_time=START))
    return QuotaService(database, clock, PlanLimits(database, clock), InProcessRateLimiter(clock))


def usage(db: Database, account: str, quota_id: str) -> int:
    with db.transaction() as session:
        row = repo.get_quota(session, account, quota_id)
        return row.usage if row is not None else 0


def set_value(db: Database, account: str, quota_id: str, value: int) -> None:
    with db.transaction() as session:
        repo.quota_for_update(session, account, quota_id, START).value = value


def test_claims_stop_at_the_value_and_name_the_quota(
    quotas: QuotaService, database: Database
) -> None:
    set_value(database, "acme", A100_GPUS, 10)
    with database.transaction() as session:
        quotas.claim(session, "acme", A100_GPUS, 8)
    with pytest.raises(FailedPrecondition) as refused, database.transaction() as session:
        quotas.claim(session, "acme", A100_GPUS, 3)
    error = refused.value
    assert error.code == "quota_exceeded"
    assert "'a100-gpus'" in error.message and "is 10 and 8 in use" in error.message
    assert "needs 3 more" in error.message and "operator" in error.message
    with database.transaction() as session:
        quotas.claim(session, "acme", A100_GPUS, 2)
    assert usage(database, "acme", A100_GPUS) == 10
    with database.transaction() as session:
        quotas.release(session, "acme", A100_GPUS, 4)
        quotas.release(session, "acme", DEPLOYED_MODELS, 1)  # never below zero
    assert usage(database, "acme", A100_GPUS) == 6
    assert usage(database, "acme", DEPLOYED_MODELS) == 0


def test_a_claim_rolls_back_with_the_callers_transaction(
    quotas: QuotaService, database: Database
) -> None:
    with pytest.raises(RuntimeError), database.transaction() as session:
        quotas.claim(session, "acme", DEPLOYED_MODELS, 1)
        raise RuntimeError("creating the deployed model failed")
    assert usage(database, "acme", DEPLOYED_MODELS) == 0


def test_defaults_unlimited_and_unknown_quotas(quotas: QuotaService, database: Database) -> None:
    with database.transaction() as session:
        quotas.claim(session, "acme", DEPLOYED_MODELS, 100)
    with pytest.raises(FailedPrecondition), database.transaction() as session:
        quotas.claim(session, "acme", DEPLOYED_MODELS, 1)
    with database.transaction() as session:
        quotas.claim(session, "bigco", DEPLOYED_MODELS, 5000)  # Enterprise: unlimited
    with pytest.raises(NotFound), database.transaction() as session:
        quotas.claim(session, "acme", "tpu-pods", 1)
    with pytest.raises(InvalidArgument), database.transaction() as session:
        quotas.claim(session, "acme", SERVERLESS_RPM, 1)
    with pytest.raises(NotFound), database.transaction() as session:
        quotas.claim(session, "nobody", A100_GPUS, 1)


def test_twenty_concurrent_claims_take_exactly_the_last_five(
    quotas: QuotaService, database: Database
) -> None:
    set_value(database, "acme", A100_GPUS, 10)
    with database.transaction() as session:
        quotas.claim(session, "acme", A100_GPUS, 5)
    start = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        start.wait()
        try:
            with database.transaction() as session:
                quotas.claim(session, "acme", A100_GPUS, 1)
            outcome = "ok"
        except FailedPrecondition:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=claim) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes).count("ok") == 5
    assert outcomes.count("refused") == 15
    assert usage(database, "acme", A100_GPUS) == 10
