"""The billing facade: one object the endpoints, the CLI and the limits slice call.

It authorizes (``BILLING_READ`` / ``BILLING_WRITE`` in the account, the
operator for grants and custom limits; a member of another account gets a
404), makes sure the account's billing row exists (with its free $1), and
delegates to the modules that hold the rules: ``credits``, ``purchases``,
``payment_methods``, ``tiers``, ``usage_report``, ``overview``, ``spend``
(the ``MoneySource`` of the limits slice), ``invoices`` and ``period``.
After every commit that changes an account's limit, credit, payment
methods, invoices or period it tells the ``MoneyListener`` (suspension).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.billing import credits
from firebox.billing import repository as repo
from firebox.billing.credits import CreditGrant
from firebox.billing.events import MoneyListener
from firebox.billing.invoices import Invoice, InvoicePage, InvoiceService
from firebox.billing.money import format_usd
from firebox.billing.overview import BillingOverview, build_overview
from firebox.billing.payment_methods import PaymentMethod, PaymentMethods
from firebox.billing.payments.provider import PaymentProvider
from firebox.billing.period import CloseReport, PeriodCloser
from firebox.billing.pricing import Pricer
from firebox.billing.purchases import CreditPurchase, Purchases, caller_key_or_new
from firebox.billing.spend import SpendReader
from firebox.billing.usage_report import UsageReport, usage_report, validate_range
from firebox.clock import Clock
from firebox.errors import InvalidArgument, NotFound
from firebox.inference.admission import Demand
from firebox.inference.metering import UsageRecord
from firebox.money_state import SpendState
from firebox.store.database import Database

MAX_SPEND_LIMIT_MICROS = 10**15  # $1,000,000,000: anything above is "unlimited"


def account_not_found(account_id: str) -> NotFound:
    return NotFound(f"Account {account_id!r} was not found.", code="account_not_found")


def _check_limit(micros: int | None, param: str) -> None:
    if micros is not None and not 0 <= micros <= MAX_SPEND_LIMIT_MICROS:
        raise InvalidArgument(
            f"Invalid spend limit {format_usd(micros)}: give an amount from 0.00 to "
            f"{format_usd(MAX_SPEND_LIMIT_MICROS)} USD, or clear it.",
            code="invalid_spend_limit",
            param=param,
        )


class BillingService:
    """Credits, purchases, payment methods, limits, usage and invoices of accounts."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        pricer: Pricer,
        provider: PaymentProvider,
        listener: MoneyListener,
        *,
        period_grace: timedelta = timedelta(hours=1),
    ) -> None:
        self._db = db
        self._clock = clock
        self._open: set[str] = set()  # accounts whose books are known to be open
        self._pricer = pricer
        self._book = pricer.book
        self._listener = listener
        self._spend = SpendReader(db, clock, pricer.book)
        self._methods = PaymentMethods(db, clock, provider)
        self._purchases = Purchases(db, clock, provider, pricer.book)
        self.invoices = InvoiceService(db, clock, provider, listener, book=pricer.book)
        self.closer = PeriodCloser(db, clock, self.invoices, listener, grace=period_grace)

    # -- MoneySource (the limits slice) -----------------------------------------

    def spend_state(self, account_id: str) -> SpendState:
        # An account created before billing existed (or whose creation hook was
        # lost to a crash) gets its books opened on first sight, free credit included.
        self.open_account(account_id)
        return self._spend.spend_state(account_id)

    def cost(self, usage: UsageRecord) -> int:
        return self._pricer.cost(usage)

    def worst_case_cost(self, demand: Demand) -> int:
        return self._pricer.worst_case_cost(demand)

    # -- accounts ------------------------------------------------------------------

    def open_account(self, account_id: str) -> None:
        """Create the account's billing row and its free $1 grant, once; idempotent.

        Accounts seen open are remembered, so the reads that call this (and the
        spend guard's snapshot refreshes) pay for the check once per replica.
        """
        if account_id in self._open:
            return
        for attempt in range(3):
            try:
                with self._db.transaction() as session:
                    if repo.grant_by_reference(session, credits.free_reference(account_id)):
                        self._open.add(account_id)
                        return  # opened before: the row and the free grant exist
                    if repo.get_account(session, account_id) is None:
                        raise account_not_found(account_id)
                    credits.ensure_account(session, account_id, self._clock.now())
                self._open.add(account_id)
                return
            except IntegrityError:
                if attempt == 2:
                    raise  # a concurrent first call won; the next loop sees its row

    def _ready(self, principal: Principal, account_id: str, permission: Permission) -> None:
        principal.require(account_id, permission)
        self.open_account(account_id)

    def overview(self, principal: Principal, account_id: str) -> BillingOverview:
        """Tier, limits, month-to-date usage, credit, cards and suspension of the account."""
        self._ready(principal, account_id, Permission.BILLING_READ)
        return self._overview(account_id)

    def _overview(self, account_id: str) -> BillingOverview:
        with self._db.transaction() as session:
            row = repo.get_billing(session, account_id)
            account = repo.get_account(session, account_id)
            if row is None or account is None:
                raise account_not_found(account_id)
            methods = [
                PaymentMethod.of(m) for m in repo.active_payment_methods(session, account_id)
            ]
            return build_overview(self._book, row, account, methods, self._clock.now())

    def set_account_spend_limit(
        self, principal: Principal, account_id: str, micros: int | None
    ) -> BillingOverview:
        """Set (or clear, with ``None``) the account's own monthly spend limit.

        It may be above the tier's limit: the effective limit is the lower of
        the two, so such a limit only bites once the tier rises past it.
        """
        self._ready(principal, account_id, Permission.BILLING_WRITE)
        _check_limit(micros, "accountSpendLimit")
        with self._db.transaction() as session:
            row = repo.lock_billing(session, account_id)
            if row is None:
                raise account_not_found(account_id)
            row.account_spend_limit_micros = micros
            row.update_time = self._clock.now()
        self._listener.money_changed(account_id)
        return self._overview(account_id)

    def set_custom_spend_limit(
        self, principal: Principal, account_id: str, micros: int | None, unlimited: bool
    ) -> BillingOverview:
        """Operator only: a custom monthly limit, or unlimited, or (neither) back to the tier's."""
        principal.require_operator()
        self.open_account(account_id)
        _check_limit(micros, "customSpendLimit")
        if unlimited and micros is not None:
            raise InvalidArgument(
                "Give either a custom spend limit or unlimited, not both.",
                code="invalid_spend_limit",
                param="unlimited",
            )
        with self._db.transaction() as session:
            row = repo.lock_billing(session, account_id)
            if row is None:
                raise account_not_found(account_id)
            row.custom_spend_limit_micros = micros
            row.unlimited = unlimited
            row.update_time = self._clock.now()
        self._listener.money_changed(account_id)
        return self._overview(account_id)

    # -- payment methods -------------------------------------------------------------

    def add_payment_method(
        self, principal: Principal, account_id: str, payment_method: str
    ) -> PaymentMethod:
        """Attach a payment method (``pm_card_visa`` with the test provider)."""
        self._ready(principal, account_id, Permission.BILLING_WRITE)
        added = self._methods.add(account_id, payment_method)
        self._listener.money_changed(account_id)
        return added

    def list_payment_methods(self, principal: Principal, account_id: str) -> list[PaymentMethod]:
        self._ready(principal, account_id, Permission.BILLING_READ)
        return self._methods.on_file(account_id)

    def delete_payment_method(
        self, principal: Principal, account_id: str, payment_method_id: str
    ) -> None:
        self._ready(principal, account_id, Permission.BILLING_WRITE)
        self._methods.delete(account_id, payment_method_id)
        self._listener.money_changed(account_id)

    # -- credits ---------------------------------------------------------------------

    def purchase_credits(
        self, principal: Principal, account_id: str, micros: int, idempotency_key: str | None
    ) -> CreditPurchase:
        """Buy credit with the card on file; see ``purchases.py`` for the guarantees."""
        self._ready(principal, account_id, Permission.BILLING_WRITE)
        bought = self._purchases.purchase(account_id, micros, idempotency_key)
        self._listener.money_changed(account_id)
        return bought

    def grant_credits(
        self,
        principal: Principal,
        account_id: str,
        micros: int,
        reason: str,
        expire_time: datetime | None,
        *,
        idempotency_key: str | None = None,
    ) -> CreditGrant:
        """Operator only: give the account credit, optionally expiring; idempotent per key."""
        principal.require_operator()
        self.open_account(account_id)
        now = self._clock.now()
        credits.validate_operator_grant(micros, reason, expire_time, now)
        reference = f"operator:{account_id}:{caller_key_or_new(idempotency_key)}"
        try:
            with self._db.transaction() as session:
                earlier = repo.grant_by_reference(session, reference)
                if earlier is None:
                    earlier = credits.add_grant(
                        session,
                        account_id,
                        source="OPERATOR",
                        micros=micros,
                        reason=reason,
                        reference=reference,
                        expire_time=expire_time,
                        now=now,
                    )
                grant = CreditGrant.of(earlier)
        except IntegrityError:
            with self._db.transaction() as session:
                winner = repo.grant_by_reference(session, reference)
                if winner is None:
                    raise
                grant = CreditGrant.of(winner)
        if grant.amount_micros != micros:
            raise InvalidArgument(
                "This idempotency key was used for a grant of another amount; use a new key.",
                code="idempotency_key_reused",
                param="idempotencyKey",
            )
        self._listener.money_changed(account_id)
        return grant

    def list_credit_grants(self, principal: Principal, account_id: str) -> list[CreditGrant]:
        """The account's grants, newest first, with what is left of each."""
        self._ready(principal, account_id, Permission.BILLING_READ)
        with self._db.transaction() as session:
            return [CreditGrant.of(g) for g in repo.list_grants(session, account_id)]

    def expire_credits(self, limit: int = 1000) -> int:
        """Write off what is left of every grant past its expiry; returns how many expired."""
        now = self._clock.now()
        with self._db.transaction() as session:
            due = repo.expired_grants(session, now, limit)
        expired = 0
        changed: set[str] = set()
        for grant_id, account_id in due:
            with self._db.transaction() as session:
                if credits.expire_grant(session, account_id, grant_id, now):
                    expired += 1
                    changed.add(account_id)
        for account_id in sorted(changed):
            self._listener.money_changed(account_id)
        return expired

    # -- usage -----------------------------------------------------------------------

    def usage(
        self, principal: Principal, account_id: str, start: datetime, end: datetime, group_by: str
    ) -> UsageReport:
        """Requests, tokens and amounts in [start, end), per model, UTC day or kind."""
        self._ready(principal, account_id, Permission.BILLING_READ)
        grouping = validate_range(start, end, group_by)
        with self._db.transaction() as session:
            return usage_report(session, account_id, start, end, grouping)

    # -- invoices and periods (rules in invoices.py and period.py) ---------------------

    def list_invoices(
        self, principal: Principal, account_id: str, page_size: int | None, page_token: str | None
    ) -> InvoicePage:
        return self.invoices.list_invoices(principal, account_id, page_size, page_token)

    def get_invoice(self, principal: Principal, account_id: str, invoice_id: str) -> Invoice:
        return self.invoices.get_invoice(principal, account_id, invoice_id)

    def pay_invoice(self, principal: Principal, account_id: str, invoice_id: str) -> Invoice:
        return self.invoices.pay_invoice(principal, account_id, invoice_id)

    def reconcile_pending(self, older_than: timedelta = timedelta(minutes=1)) -> int:
        """Complete credit purchases left PENDING (a crash mid-charge, a processing card)."""
        done = self._purchases.reconcile_pending(older_than)
        for account_id in sorted(set(done)):
            self._listener.money_changed(account_id)
        return len(done)

    def housekeeping(self) -> None:
        """The period job's extra chores: expire credit, complete pending purchases."""
        self.expire_credits()
        self.reconcile_pending()

    def retry_failed_payments(self) -> list[Invoice]:
        return self.invoices.retry_failed_payments()

    def close_period(self, period: str) -> CloseReport:
        return self.closer.close_period(period)

    def close_due_periods(self) -> list[str]:
        return self.closer.close_due_periods()
