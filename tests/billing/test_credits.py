"""Credit grants: the free $1 exactly once, operator grants, expiry, the balance invariant."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from firebox.billing import repository as repo
from firebox.billing.ledger import Ledger
from firebox.billing.models import BillingAccountRow, CreditEntryRow, CreditGrantRow
from firebox.errors import InvalidArgument, NotFound, PermissionDenied
from tests.billing.conftest import T0, usage
from tests.billing.test_service import OPERATOR, USD, Billing, billing, member

__all__ = ["billing"]  # the fixture, shared with test_service


def grants(b: Billing) -> list[tuple[str, int, int, str]]:
    with b.db.transaction() as session:
        rows = session.scalars(select(CreditGrantRow).order_by(CreditGrantRow.create_time))
        return [(g.source, g.amount_micros, g.remaining_micros, g.reference) for g in rows]


def entries(b: Billing) -> list[tuple[str, int]]:
    with b.db.transaction() as session:
        rows = session.scalars(select(CreditEntryRow).order_by(CreditEntryRow.id))
        return [(e.kind, e.amount_micros) for e in rows]


def balance(b: Billing, account: str = "acme") -> int:
    """The cached balance, after checking it equals the sum of the account's entries."""
    with b.db.transaction() as session:
        row = session.get(BillingAccountRow, account)
        assert row is not None
        assert row.credit_balance_micros == repo.credit_entry_sum(session, account)
        return row.credit_balance_micros


def test_a_new_account_gets_one_dollar_exactly_once(billing: Billing) -> None:
    billing.service.open_account("acme")
    billing.service.open_account("acme")
    billing.service.overview(member(), "acme")
    assert grants(billing) == [("FREE", USD, USD, "free:acme")]
    assert entries(billing) == [("GRANT", USD)]
    assert balance(billing) == USD


def test_every_read_opens_the_account(billing: Billing) -> None:
    assert billing.service.list_credit_grants(member(), "acme")[0].amount_micros == USD
    assert balance(billing) == USD


def test_opening_a_missing_account_is_not_found(billing: Billing) -> None:
    with pytest.raises(NotFound):
        billing.service.open_account("nobody")


def test_operator_grant_with_expiry_then_expire_credits(billing: Billing) -> None:
    s = billing.service
    grant = s.grant_credits(OPERATOR, "acme", 5 * USD, "outage", T0 + timedelta(days=1))
    assert (grant.source, grant.amount_micros, grant.remaining_micros) == (
        "OPERATOR",
        5 * USD,
        5 * USD,
    )
    assert grant.reason == "outage"
    assert balance(billing) == 6 * USD
    assert billing.listener.calls == ["acme"]

    assert s.expire_credits() == 0  # not yet due
    billing.clock.advance(timedelta(days=2))
    assert s.expire_credits() == 1
    assert s.expire_credits() == 0  # nothing left to expire

    assert balance(billing) == USD
    assert grants(billing)[1][:3] == ("OPERATOR", 5 * USD, 0)
    assert entries(billing) == [("GRANT", USD), ("GRANT", 5 * USD), ("EXPIRE", -5 * USD)]
    assert billing.listener.calls == ["acme", "acme"]
    assert s.overview(member(), "acme").credit_balance_micros == USD


def test_expiry_writes_off_only_what_usage_left(billing: Billing) -> None:
    s = billing.service
    s.grant_credits(OPERATOR, "acme", 5 * USD, "trial", T0 + timedelta(days=1))
    # $2.00 of usage: the ledger takes it from the earliest-expiring grant first.
    priced = billing.pricer.price(usage(prompt_tokens=10_000_000))
    Ledger(billing.db, billing.clock, billing.listener).apply([priced])
    assert balance(billing) == 4 * USD
    billing.clock.advance(timedelta(days=1))
    assert s.expire_credits() == 1
    assert entries(billing)[-1] == ("EXPIRE", -3 * USD)
    assert balance(billing) == USD
    left = {g.source: g.remaining_micros for g in s.list_credit_grants(member(), "acme")}
    assert left == {"OPERATOR": 0, "FREE": USD}


def test_operator_grant_is_idempotent_per_key(billing: Billing) -> None:
    s = billing.service
    first = s.grant_credits(OPERATOR, "acme", 3 * USD, "goodwill", None, idempotency_key="g-1")
    again = s.grant_credits(OPERATOR, "acme", 3 * USD, "goodwill", None, idempotency_key="g-1")
    assert again == first
    assert balance(billing) == 4 * USD
    with pytest.raises(InvalidArgument) as caught:
        s.grant_credits(OPERATOR, "acme", 4 * USD, "goodwill", None, idempotency_key="g-1")
    assert caught.value.code == "idempotency_key_reused"
    s.grant_credits(OPERATOR, "acme", 3 * USD, "goodwill", None, idempotency_key="g-2")
    assert balance(billing) == 7 * USD


@pytest.mark.parametrize(
    ("micros", "expire_days", "code"),
    [(0, None, "invalid_amount"), (-USD, None, "invalid_amount"), (USD, -1, "invalid_expire_time")],
)
def test_invalid_operator_grants(
    billing: Billing, micros: int, expire_days: int | None, code: str
) -> None:
    expire = None if expire_days is None else T0 + timedelta(days=expire_days)
    with pytest.raises(InvalidArgument) as caught:
        billing.service.grant_credits(OPERATOR, "acme", micros, "x", expire)
    assert caught.value.code == code
    assert balance(billing) == USD  # opened, nothing granted beyond the free dollar


def test_only_the_operator_grants(billing: Billing) -> None:
    with pytest.raises(PermissionDenied):
        billing.service.grant_credits(member(), "acme", USD, "self-service", None)
    with pytest.raises(NotFound):
        billing.service.grant_credits(OPERATOR, "nobody", USD, "x", None)


def test_an_account_the_ledger_opened_still_gets_its_free_dollar(billing: Billing) -> None:
    # Usage arrives before any billing call: the ledger creates the billing row alone.
    priced = billing.pricer.price(usage(prompt_tokens=1_000_000))  # $0.20
    Ledger(billing.db, billing.clock, billing.listener).apply([priced])
    billing.service.open_account("acme")
    billing.service.open_account("acme")
    assert [g[:2] for g in grants(billing)] == [("FREE", USD)]
    assert balance(billing) == USD
    assert billing.service.overview(member(), "acme").month_to_date_usage_micros == 200_000
