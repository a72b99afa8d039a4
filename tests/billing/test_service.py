"""The billing facade: authorization, overview, spend limits, usage reports, MoneySource.

The helpers at the top (``Recorder``, ``member``, ``OPERATOR``, the
``billing`` fixture) are shared by the other account-side billing tests.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.billing.ledger import Ledger
from firebox.billing.overrides import NoOverrides
from firebox.billing.overview import month_bounds
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer
from firebox.billing.service import BillingService
from firebox.clock import FakeClock
from firebox.errors import InvalidArgument, NotFound, PermissionDenied
from firebox.store.database import Database
from tests.billing.conftest import T0, MakeAccount, usage

USD = 1_000_000


class Recorder:
    """A MoneyListener that remembers whom it was told about."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def money_changed(self, account_id: str) -> None:
        self.calls.append(account_id)


def member(account_id: str = "acme", role: Role = Role.ADMIN) -> Principal:
    return Principal(
        account_id=account_id,
        user_id=f"{role.value}-user",
        user_pk=1,
        role=role,
        key_id="key_1",
        key_hash="0" * 64,
    )


OPERATOR = Principal(
    account_id="firebox",
    user_id="operator",
    user_pk=0,
    role=Role.ADMIN,
    key_id="key_op",
    key_hash="1" * 64,
    is_operator=True,
)


class Billing:
    """The service under test with its fake clock, provider and listener."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = FakeClock(T0)
        self.provider = TestPaymentProvider()
        self.listener = Recorder()
        self.pricer = Pricer(PriceBook.load(), NoOverrides(), clock=self.clock)
        self.service = BillingService(db, self.clock, self.pricer, self.provider, self.listener)


@pytest.fixture
def billing(billing_db: Database, make_account: MakeAccount) -> Billing:
    """A service over accounts "acme" and "other", neither opened for billing yet."""
    make_account("acme", billing=False)
    make_account("other", billing=False)
    return Billing(billing_db)


# -- authorization --------------------------------------------------------------------


def _calls(b: Billing) -> dict[str, Callable[[Principal], object]]:
    s = b.service
    return {
        "overview": lambda p: s.overview(p, "acme"),
        "list_payment_methods": lambda p: s.list_payment_methods(p, "acme"),
        "usage": lambda p: s.usage(p, "acme", T0, T0 + timedelta(days=1), "model"),
        "add_payment_method": lambda p: s.add_payment_method(p, "acme", "pm_card_visa"),
        "purchase_credits": lambda p: s.purchase_credits(p, "acme", 10 * USD, None),
        "set_account_spend_limit": lambda p: s.set_account_spend_limit(p, "acme", USD),
        "delete_payment_method": lambda p: s.delete_payment_method(p, "acme", "pm-x"),
    }


WRITES = {"add_payment_method", "purchase_credits", "set_account_spend_limit"}
WRITES |= {"delete_payment_method"}


@pytest.mark.parametrize("call", sorted(WRITES | {"overview", "list_payment_methods", "usage"}))
def test_another_accounts_member_gets_not_found(billing: Billing, call: str) -> None:
    with pytest.raises(NotFound) as caught:
        _calls(billing)[call](member("other"))
    assert caught.value.code == "account_not_found"


@pytest.mark.parametrize("call", sorted(WRITES))
def test_inference_user_may_not_write(billing: Billing, call: str) -> None:
    with pytest.raises(PermissionDenied) as caught:
        _calls(billing)[call](member("acme", Role.INFERENCE_USER))
    assert caught.value.code == "role_forbids"


@pytest.mark.parametrize("call", sorted(WRITES))
def test_user_role_reads_but_may_not_write(billing: Billing, call: str) -> None:
    assert billing.service.overview(member("acme", Role.USER), "acme").account_id == "acme"
    with pytest.raises(PermissionDenied):
        _calls(billing)[call](member("acme", Role.USER))


def test_operator_only_actions_refuse_an_account_admin(billing: Billing) -> None:
    admin = member("acme")
    with pytest.raises(PermissionDenied) as caught:
        billing.service.grant_credits(admin, "acme", USD, "gift", None)
    assert caught.value.code == "operator_only"
    with pytest.raises(PermissionDenied):
        billing.service.set_custom_spend_limit(admin, "acme", 2000 * USD, False)


def test_operator_on_a_missing_account_gets_not_found(billing: Billing) -> None:
    with pytest.raises(NotFound):
        billing.service.overview(OPERATOR, "nobody")


# -- overview and spend limits ------------------------------------------------------------


def test_overview_of_a_new_account(billing: Billing) -> None:
    view = billing.service.overview(member(), "acme")
    assert view.tier == 1
    assert view.spend_limit_micros == 50 * USD
    assert view.account_spend_limit_micros is None
    assert view.month_to_date_usage_micros == 0
    assert view.credit_balance_micros == 1 * USD
    assert view.historical_spend_micros == 0
    assert view.payment_methods == []
    assert view.suspend_state == "UNSUSPENDED"
    assert (view.period, view.period_start, view.period_end) == (
        "2026-01",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )


def test_month_bounds_roll_over_the_year() -> None:
    assert month_bounds(datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2025, 12, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(("period", "expected"), [("2026-01", 7 * USD), ("2025-12", 0)])
def test_month_to_date_usage_is_zero_after_the_period_rolled(
    billing_db: Database, make_account: MakeAccount, period: str, expected: int
) -> None:
    make_account("acme", period=period, period_usage_micros=7 * USD)
    view = Billing(billing_db).service.overview(member(), "acme")
    assert view.month_to_date_usage_micros == expected


def test_overview_reads_the_suspend_state(billing: Billing) -> None:
    with billing.db.transaction() as session:
        row = session.get(AccountRow, "acme")
        assert row is not None
        row.suspend_state = "SUSPENDED"
    assert billing.service.overview(member(), "acme").suspend_state == "SUSPENDED"


def test_account_spend_limit_lowers_but_never_raises_the_limit(billing: Billing) -> None:
    s = billing.service
    view = s.set_account_spend_limit(member(), "acme", 20 * USD)
    assert (view.spend_limit_micros, view.account_spend_limit_micros) == (20 * USD, 20 * USD)
    view = s.set_account_spend_limit(member(), "acme", 1000 * USD)
    assert (view.spend_limit_micros, view.account_spend_limit_micros) == (50 * USD, 1000 * USD)
    view = s.set_account_spend_limit(member(), "acme", 0)
    assert view.spend_limit_micros == 0
    view = s.set_account_spend_limit(member(), "acme", None)
    assert (view.spend_limit_micros, view.account_spend_limit_micros) == (50 * USD, None)
    assert billing.listener.calls == ["acme"] * 4
    with pytest.raises(InvalidArgument) as caught:
        s.set_account_spend_limit(member(), "acme", -1)
    assert caught.value.code == "invalid_spend_limit"


def test_custom_spend_limit_and_unlimited(billing: Billing) -> None:
    s = billing.service
    view = s.set_custom_spend_limit(OPERATOR, "acme", 2000 * USD, False)
    assert (view.tier, view.usage_tier, view.spend_limit_micros) == ("custom", 1, 2000 * USD)
    s.set_account_spend_limit(member(), "acme", 300 * USD)
    assert s.overview(member(), "acme").spend_limit_micros == 300 * USD
    view = s.set_custom_spend_limit(OPERATOR, "acme", None, True)
    assert (view.tier, view.spend_limit_micros, view.unlimited) == ("custom", None, True)
    view = s.set_custom_spend_limit(OPERATOR, "acme", None, False)
    assert (view.tier, view.spend_limit_micros) == (1, 50 * USD)
    with pytest.raises(InvalidArgument):
        s.set_custom_spend_limit(OPERATOR, "acme", 5 * USD, True)
    assert billing.service.spend_state("acme").spend_limit_micros == 50 * USD


# -- usage reports ---------------------------------------------------------------------------


def _write_usage(b: Billing) -> None:
    small = "accounts/fireworks/models/small"
    big = "accounts/fireworks/models/big"
    records = [
        usage(model=small, base_model=small, prompt_tokens=1_000_000),  # $0.20
        usage(model=small, base_model=small, completion_tokens=500_000, kind="completion"),
        usage(
            model=big,
            base_model=big,
            price_class="TEXT_DENSE_16B_TO_80B",
            prompt_tokens=2_000_000,
            cached_prompt_tokens=1_000_000,
            completion_tokens=1_000_000,
            time=T0 + timedelta(days=1),
        ),  # 1M x 0.90 + 1M x 0.45 + 1M x 0.90 = $2.25
        usage(model=small, base_model=small, prompt_tokens=5, time=T0 + timedelta(days=30)),
    ]
    Ledger(b.db, b.clock, b.listener).apply([b.pricer.price(r) for r in records])


def test_usage_grouped_by_model_day_and_kind(billing: Billing) -> None:
    billing.service.open_account("acme")
    _write_usage(billing)
    s, start, end = billing.service, T0 - timedelta(hours=1), T0 + timedelta(days=5)

    by_model = s.usage(member(), "acme", start, end, "model")
    assert [(g.key, g.requests, g.total_tokens, g.amount_micros) for g in by_model.groups] == [
        ("accounts/fireworks/models/big", 1, 3_000_000, 2_250_000),
        ("accounts/fireworks/models/small", 2, 1_500_000, 300_000),
    ]
    assert (by_model.total.requests, by_model.total.amount_micros) == (3, 2_550_000)
    assert by_model.total.cached_prompt_tokens == 1_000_000
    # The free $1 paid the first dollar of it.
    assert by_model.total.credit_applied_micros == 1 * USD

    by_day = s.usage(member(), "acme", start, end, "day")
    assert [(g.key, g.amount_micros) for g in by_day.groups] == [
        ("2026-01-15", 300_000),
        ("2026-01-16", 2_250_000),
    ]
    by_kind = s.usage(member(), "acme", start, end, "kind")
    assert [(g.key, g.requests, g.amount_micros) for g in by_kind.groups] == [
        ("chat", 2, 2_450_000),
        ("completion", 1, 100_000),
    ]


def test_usage_refuses_bad_ranges_and_groupings(billing: Billing) -> None:
    s = billing.service
    with pytest.raises(InvalidArgument) as caught:
        s.usage(member(), "acme", T0, T0 + timedelta(days=1), "week")
    assert caught.value.code == "invalid_group_by"
    with pytest.raises(InvalidArgument) as caught:
        s.usage(member(), "acme", T0, T0, "day")
    assert caught.value.code == "invalid_time_range"


# -- MoneySource --------------------------------------------------------------------------------


def test_money_source_delegates_to_spend_and_pricing(billing: Billing) -> None:
    s = billing.service
    s.open_account("acme")
    state = s.spend_state("acme")
    assert (state.credit_balance_micros, state.spend_limit_micros) == (1 * USD, 50 * USD)
    assert (state.has_payment_method, state.failed_payments) == (False, False)
    assert s.cost(usage(prompt_tokens=1_000_000)) == 200_000
