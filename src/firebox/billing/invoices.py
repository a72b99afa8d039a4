"""Invoices: reading them, paying them by hand, and retrying failed payments.

An invoice (made by ``billing/period.py`` when a month closes) bills the
month's usage not covered by credits: ``total = usage - credits_applied``,
exact to the micro-dollar. Cards are charged whole cents, so the amount
charged (``amount_due_micros``) is the total rounded UP to the next cent;
that charged amount is what a SUCCEEDED payment row holds and what raises
the account's historical spend.

States: DRAFT (only inside the closing transaction) -> OPEN (due) -> PAID,
or -> PAYMENT_FAILED when a charge is declined; VOID is set by an operator.
A total of zero is PAID at once. Each charge attempt ``n`` uses the
provider idempotency key ``invoice:{id}:attempt:{n}`` and is made under a
row lock of the invoice with the attempt count committed only together with
its payment row: a crash mid-charge retries the same key, so the card is
never charged twice for one attempt. (On SQLite that lock is the database's
write lock, so ledger writes wait for the charge; the ingest queue absorbs it.)

Automatic retries: an OPEN invoice whose account had a payment method at
close is charged by the period close (and again by the job should the close
have crashed before charging). After a declined attempt the next one is due
1 day, then 3 days, then 5 days after the previous one; after that it waits
for the account to pay by hand. ``billing_accounts.failed_invoices`` counts
the account's invoices in PAYMENT_FAILED (the limits slice suspends on it).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.billing import invoice_repository as repo
from firebox.billing.events import MoneyListener
from firebox.billing.models import InvoiceLineRow, InvoiceRow, PaymentRow
from firebox.billing.money import MICROS_PER_CENT, cents_up
from firebox.billing.payments.pending import is_pending
from firebox.billing.payments.provider import ChargeResult, PaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.tiers import record_spend
from firebox.clock import Clock
from firebox.errors import (
    FailedPrecondition,
    FireboxError,
    NotFound,
    PaymentRequired,
    ServiceUnavailable,
)
from firebox.paging import decode_token, next_token, page_size
from firebox.store.database import Database

log = logging.getLogger(__name__)

RETRY_BACKOFF = (timedelta(days=1), timedelta(days=3), timedelta(days=5))
PAYABLE = ("OPEN", "PAYMENT_FAILED")


def next_attempt_after(attempts: int, now: datetime) -> datetime | None:
    """When to retry after the ``attempts``-th failed attempt: +1 d, +3 d, +5 d, then never."""
    if 1 <= attempts <= len(RETRY_BACKOFF):
        return now + RETRY_BACKOFF[attempts - 1]
    return None


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """Usage of one model and kind in the invoiced month."""

    model: str
    kind: str
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    images: int
    steps: int
    gpu_milliseconds: int
    training_tokens: int
    amount_micros: int
    credit_applied_micros: int

    @classmethod
    def of(cls, row: InvoiceLineRow) -> InvoiceLine:
        return cls(
            model=row.model,
            kind=row.kind,
            requests=row.requests,
            prompt_tokens=row.prompt_tokens,
            cached_prompt_tokens=row.cached_prompt_tokens,
            completion_tokens=row.completion_tokens,
            images=row.images,
            steps=row.steps,
            gpu_milliseconds=row.gpu_milliseconds,
            training_tokens=row.training_tokens,
            amount_micros=row.amount_micros,
            credit_applied_micros=row.credit_applied_micros,
        )


@dataclass(frozen=True, slots=True)
class Invoice:
    """An account's invoice for one month; ``lines`` is empty in listings."""

    id: str
    account_id: str
    period: str
    state: str
    usage_micros: int
    credits_applied_micros: int
    total_micros: int
    amount_due_micros: int  # total rounded up to whole cents: what is charged
    attempt_count: int
    last_failure: str
    next_attempt_time: datetime | None
    create_time: datetime
    update_time: datetime
    paid_time: datetime | None
    lines: tuple[InvoiceLine, ...] = ()

    @classmethod
    def of(cls, row: InvoiceRow, lines: list[InvoiceLineRow] | None = None) -> Invoice:
        return cls(
            id=row.id,
            account_id=row.account_id,
            period=row.period,
            state=row.state,
            usage_micros=row.usage_micros,
            credits_applied_micros=row.credits_applied_micros,
            total_micros=row.total_micros,
            amount_due_micros=cents_up(row.total_micros) * MICROS_PER_CENT,
            attempt_count=row.attempt_count,
            last_failure=row.last_failure,
            next_attempt_time=row.next_attempt_time,
            create_time=row.create_time,
            update_time=row.update_time,
            paid_time=row.paid_time,
            lines=tuple(InvoiceLine.of(line) for line in lines or ()),
        )


@dataclass(frozen=True, slots=True)
class InvoicePage:
    invoices: list[Invoice]
    next_page_token: str
    total_size: int


def invoice_not_found(account_id: str, invoice_id: str) -> NotFound:
    return NotFound(
        f"Invoice {invoice_id!r} was not found in account {account_id!r}; list the "
        "account's invoices to find its id.",
        code="invoice_not_found",
    )


class InvoiceService:
    """Reads invoices and charges them through the payment provider."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        provider: PaymentProvider,
        listener: MoneyListener,
        *,
        book: PriceBook | None = None,
    ) -> None:
        self._db = db
        self._book = book  # the operator's price book (tier thresholds); None: the packaged one
        self._clock = clock
        self._provider = provider
        self._listener = listener
        # One charge at a time in this process; the invoice row lock does it across replicas.
        self._charging = threading.Lock()

    def list_invoices(
        self, principal: Principal, account_id: str, page_size_: int | None, page_token: str | None
    ) -> InvoicePage:
        """The account's invoices, newest month first, without lines."""
        principal.require(account_id, Permission.BILLING_READ)
        limit = page_size(page_size_)
        before = decode_token(page_token)
        with self._db.transaction() as session:
            if not repo.account_exists(session, account_id):
                raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")
            rows = list(repo.list_invoices(session, account_id, before=before, limit=limit))
            return InvoicePage(
                invoices=[Invoice.of(r) for r in rows],
                next_page_token=next_token([r.id for r in rows], limit),
                total_size=repo.count_invoices(session, account_id),
            )

    def get_invoice(self, principal: Principal, account_id: str, invoice_id: str) -> Invoice:
        principal.require(account_id, Permission.BILLING_READ)
        with self._db.transaction() as session:
            row = repo.get_invoice(session, account_id, invoice_id)
            if row is None:
                raise invoice_not_found(account_id, invoice_id)
            return Invoice.of(row, repo.lines_of(session, [row.id])[row.id])

    def pay_invoice(self, principal: Principal, account_id: str, invoice_id: str) -> Invoice:
        """Charge an OPEN or PAYMENT_FAILED invoice now with the account's payment method.

        A declined card leaves the invoice PAYMENT_FAILED and raises a 402
        ``payment_declined``; the attempt is recorded either way.
        """
        principal.require(account_id, Permission.BILLING_WRITE)
        with self._db.transaction() as session:
            row = repo.get_invoice(session, account_id, invoice_id)
            if row is None:
                raise invoice_not_found(account_id, invoice_id)
            _require_payable(row)
        invoice, result = self.charge(invoice_id, manual=True)
        if result is not None and not result.succeeded:
            raise PaymentRequired(
                f"The payment of invoice {invoice_id!r} was declined ({result.failure_code}: "
                f"{result.failure_message}). Add another payment method and pay it again.",
                code="payment_declined",
            )
        return invoice

    def retry_failed_payments(self, limit: int = 500) -> list[Invoice]:
        """Charge every invoice whose next automatic attempt is due; returns those charged."""
        with self._db.transaction() as session:
            due = repo.due_payment_ids(session, self._clock.now(), limit)
        done: list[Invoice] = []
        for invoice_id in due:
            try:
                invoice, result = self.charge(invoice_id, manual=False)
                if result is not None:
                    done.append(invoice)
            except Exception:
                log.exception("payment attempt of invoice %s failed; retried next run", invoice_id)
        return done

    def charge(self, invoice_id: str, *, manual: bool) -> tuple[Invoice, ChargeResult | None]:
        """Make the next payment attempt of an invoice; the result is None if none was made.

        Nothing is charged unless the invoice is still OPEN or PAYMENT_FAILED
        once locked. Without a payment method a manual payment is refused
        (``payment_method_required``) and automatic retries stop.
        """
        with self._charging:
            try:
                invoice, result = self._charge_locked(invoice_id, manual=manual)
            except IntegrityError:
                # Another process recorded this very attempt first: its outcome stands.
                with self._db.transaction() as session:
                    row = repo.lock_invoice(session, invoice_id)
                    assert row is not None
                    invoice, result = Invoice.of(row), None
        if result is not None:
            self._listener.money_changed(invoice.account_id)
        return invoice, result

    def _charge_locked(
        self, invoice_id: str, *, manual: bool
    ) -> tuple[Invoice, ChargeResult | None]:
        with self._db.transaction() as session:
            repo.begin_write(session)
            row = repo.lock_invoice(session, invoice_id)
            if row is None:
                raise NotFound(f"Invoice {invoice_id!r} was not found.", code="invoice_not_found")
            if manual:
                _require_payable(row)
            elif row.state not in PAYABLE:
                return Invoice.of(row), None
            now = self._clock.now()
            method = repo.active_payment_method(session, row.account_id)
            if method is None:
                if manual:
                    raise FailedPrecondition(
                        "The account has no payment method; add one, then pay the invoice.",
                        code="payment_method_required",
                    )
                row.next_attempt_time = None
                row.last_failure = "no payment method on file; waiting to be paid by hand"
                row.update_time = now
                return Invoice.of(row), None
            attempt = row.attempt_count + 1
            cents = cents_up(row.total_micros)
            key = f"invoice:{row.id}:attempt:{attempt}"
            try:
                result = self._provider.charge(
                    row.account_id,
                    method.provider_ref,
                    cents,
                    f"Firebox invoice {row.period} ({row.id})",
                    key,
                )
            except FireboxError:
                raise
            except Exception as exc:
                log.warning("payment provider failed for invoice %s: %s", row.id, exc)
                raise ServiceUnavailable(
                    "The payment provider did not answer; try paying the invoice again shortly.",
                    code="payment_provider_unavailable",
                ) from exc
            if is_pending(result):
                # Not an outcome yet: record nothing, so the next try repeats this
                # attempt's key and learns how it ended (never a second charge).
                raise ServiceUnavailable(
                    f"The payment of invoice {row.id!r} is still being processed by the "
                    "payment provider; check again in a few minutes.",
                    code="payment_processing",
                )
            session.add(
                PaymentRow(
                    id=f"pay_{row.id[4:]}_{attempt}",
                    account_id=row.account_id,
                    purpose="INVOICE",
                    invoice_id=row.id,
                    payment_method_id=method.id,
                    amount_micros=cents * MICROS_PER_CENT,
                    state="SUCCEEDED" if result.succeeded else "FAILED",
                    provider_ref=result.provider_ref,
                    failure_code=result.failure_code,
                    failure_message=result.failure_message[:512],
                    idempotency_key=key,
                    create_time=now,
                )
            )
            was_failed = row.state == "PAYMENT_FAILED"
            row.attempt_count = attempt
            row.update_time = now
            if result.succeeded:
                row.state = "PAID"
                row.paid_time = now
                row.next_attempt_time = None
                if was_failed:
                    repo.add_failed_invoices(session, row.account_id, -1, now)
                record_spend(session, row.account_id, cents * MICROS_PER_CENT, self._book)
            else:
                row.state = "PAYMENT_FAILED"
                row.last_failure = f"{result.failure_code}: {result.failure_message}"[:512]
                row.next_attempt_time = next_attempt_after(attempt, now)
                if not was_failed:
                    repo.add_failed_invoices(session, row.account_id, 1, now)
            session.flush()
            return Invoice.of(row), result


def _require_payable(row: InvoiceRow) -> None:
    if row.state == "PAID":
        raise FailedPrecondition(
            f"Invoice {row.id!r} is already paid; there is nothing to pay.",
            code="invoice_already_paid",
        )
    if row.state == "VOID":
        raise FailedPrecondition(
            f"Invoice {row.id!r} was voided and cannot be paid.", code="invoice_void"
        )
    if row.state not in PAYABLE:
        raise FailedPrecondition(
            f"Invoice {row.id!r} is not finalized yet; wait for the period close to finish.",
            code="invoice_not_finalized",
        )
