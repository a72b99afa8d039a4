"""The monthly period close: one invoice per account and month, then its payment.

Closing month P (which must have ended, in UTC, by the clock) makes, for
every account with usage records in P and no invoice for P yet, one invoice
whose lines sum the records per (model, kind); ``usage`` is the sum of their
amounts, ``credits_applied`` the part credits paid when each record was
written, ``total = usage - credits_applied``. The invoice is created DRAFT
and finalized in the same transaction: a zero total is PAID at once, any
other total is OPEN and, when the account has a payment method, charged
right away (``InvoiceService.charge``; rounded up to whole cents).

Idempotency and replicas: ``invoices`` is unique by (account, period), so a
second close, on this or another replica at the same moment, makes nothing
new (the loser's insert fails and it moves on).

Late usage: the job closes P only ``grace`` (default 1 hour) after P ended,
so records still in an ingest queue or a restarted replica's spool land
first; ``close_period`` by hand (CLI, admin endpoint) closes at once. A
record of P written after P's invoice (e.g. replayed from a
spool after a crash) stays in the ledger but is never invoiced — a closed
invoice is not reopened and no follow-up invoice is made. Each close reports
such records in ``CloseReport.late_records`` and logs a warning, so an
operator can settle them by hand. (It is detected by comparing the records
of P with the requests the invoice lines cover.)

``PeriodCloseJob`` runs the close, the payment retries and any extra chore
(credit expiry) every ``interval_s`` in a daemon thread.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from firebox.billing import invoice_repository as repo
from firebox.billing.events import MoneyListener
from firebox.billing.invoices import InvoiceService
from firebox.billing.models import InvoiceLineRow, InvoiceRow
from firebox.billing.pricing import period_of
from firebox.clock import Clock
from firebox.errors import FailedPrecondition, InvalidArgument
from firebox.store.database import Database
from firebox.wire import MAX_YEAR, MIN_YEAR

log = logging.getLogger(__name__)

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def validate_period(period: str) -> str:
    """``period`` if it is a month YYYY-MM in the accepted years (``firebox.wire``), else 400."""
    match = _PERIOD.fullmatch(period)
    if not match or not MIN_YEAR <= int(match.group(1)) <= MAX_YEAR:
        raise InvalidArgument(
            f"Invalid period {period!r}: give a month as YYYY-MM, e.g. 2026-01, in the "
            f"years {MIN_YEAR} to {MAX_YEAR}.",
            code="invalid_period",
            param="period",
        )
    return period


@dataclass(slots=True)
class CloseReport:
    """What one close of a period did."""

    period: str
    invoice_ids: list[str] = field(default_factory=list)  # invoices made by this close
    paid: int = 0  # of those: paid (zero total, or charged successfully)
    payment_failed: int = 0  # charged and declined
    open: int = 0  # due, waiting to be paid by hand (no payment method)
    already_invoiced: int = 0  # accounts invoiced by an earlier (or a concurrent) close
    late_records: int = 0  # usage records of the period that no invoice covers


class PeriodCloser:
    """Closes ended months: makes their invoices and charges them."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        invoices: InvoiceService,
        listener: MoneyListener,
        *,
        rescan_s: float = 3600.0,
        grace: timedelta = timedelta(hours=1),
    ) -> None:
        self._db = db
        self._clock = clock
        self._invoices = invoices
        self._listener = listener
        self._rescan_s = rescan_s
        self._grace = grace
        # (current month, when) of the last scan that found every ended month closed.
        self._clean: tuple[str, datetime] | None = None
        self._lock = threading.Lock()

    def close_period(self, period: str) -> CloseReport:
        """Invoice every account's usage of ``period``, an ended month; idempotent."""
        validate_period(period)
        current = period_of(self._clock.now())
        if period >= current:
            raise FailedPrecondition(
                f"Period {period} has not ended yet (it is {current} now); a month is "
                "closed once it is over.",
                code="period_not_ended",
                param="period",
            )
        report = CloseReport(period=period)
        with self._db.transaction() as session:
            records = repo.record_counts(session, period)
            covered = repo.invoiced_counts(session, period)
        for account_id in sorted(records):
            if account_id in covered:
                report.already_invoiced += 1
                report.late_records += max(records[account_id] - covered[account_id], 0)
                continue
            self._close_account(account_id, period, report)
        if report.late_records:
            log.warning(
                "period %s: %d usage record(s) arrived after their invoice and are not invoiced",
                period,
                report.late_records,
            )
        return report

    def close_due_periods(self) -> list[str]:
        """Close every month that ended ``grace`` ago or more, with usage some invoice
        does not cover yet.

        The grace leaves time for the month's last records to reach the
        ledger from replicas' ingest queues and from the spool of a replica
        that died and restarted. The scan over all usage runs when the month
        (shifted by the grace) changes and otherwise at most every
        ``rescan_s`` once it found nothing to do.
        """
        now = self._clock.now()
        # P is due once now >= end of P + grace, i.e. P is before the month of now - grace.
        current = period_of(now - self._grace)
        with self._lock:
            clean = self._clean
            if clean and clean[0] == current and (now - clean[1]).total_seconds() < self._rescan_s:
                return []
        with self._db.transaction() as session:
            due = repo.uninvoiced_periods(session, current)
        for period in due:
            self.close_period(period)
        with self._lock:
            self._clean = (current, now)
        return due

    def _close_account(self, account_id: str, period: str, report: CloseReport) -> None:
        now = self._clock.now()
        try:
            with self._db.transaction() as session:
                repo.begin_write(session)
                lines = repo.usage_lines(session, account_id, period)
                usage = sum(int(line["amount_micros"]) for line in lines)
                credits = sum(int(line["credit_applied_micros"]) for line in lines)
                invoice = InvoiceRow(
                    id=f"inv_{period.replace('-', '')}_{secrets.token_hex(6)}",
                    account_id=account_id,
                    period=period,
                    state="DRAFT",
                    usage_micros=usage,
                    credits_applied_micros=credits,
                    total_micros=usage - credits,
                    attempt_count=0,
                    last_failure="",
                    create_time=now,
                    update_time=now,
                )
                session.add(invoice)
                session.flush()  # the (account, period) unique constraint decides here
                session.add_all(InvoiceLineRow(invoice_id=invoice.id, **line) for line in lines)
                if invoice.total_micros == 0:
                    invoice.state, invoice.paid_time = "PAID", now
                else:
                    invoice.state = "OPEN"
                    if repo.active_payment_method(session, account_id) is not None:
                        invoice.next_attempt_time = now
        except IntegrityError:
            report.already_invoiced += 1
            return
        report.invoice_ids.append(invoice.id)
        state = invoice.state
        if invoice.next_attempt_time is not None:
            try:
                state = self._invoices.charge(invoice.id, manual=False)[0].state
            except Exception:
                log.exception("charging invoice %s failed; the job retries it", invoice.id)
        report.paid += state == "PAID"
        report.payment_failed += state == "PAYMENT_FAILED"
        report.open += state == "OPEN"
        self._listener.money_changed(account_id)


@dataclass(frozen=True, slots=True)
class JobRun:
    """What one run of the period-close job did."""

    closed_periods: list[str]
    payment_attempts: int
    errors: list[str]


class PeriodCloseJob:
    """Every ``interval_s``: close ended months, retry due payments, run ``extra``.

    A daemon thread (not an asyncio task: every step is blocking SQL and
    provider I/O). ``run_once`` runs one round synchronously, for tests and
    the test-clock endpoint; rounds never overlap. Every replica may run the
    job: the invoice unique constraint and row locks make rounds on several
    replicas safe.
    """

    def __init__(
        self,
        closer: PeriodCloser,
        invoices: InvoiceService,
        clock: Clock,
        interval_s: float = 30.0,
        extra: Callable[[], object] | None = None,
    ) -> None:
        self._closer = closer
        self._invoices = invoices
        self._clock = clock
        self._interval_s = interval_s
        self._extra = extra
        self._round = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="period-close", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def run_once(self) -> JobRun:
        """One round; a failing step is logged and does not stop the others."""
        closed: list[str] = []
        attempts = 0
        errors: list[str] = []
        with self._round:
            try:
                closed = self._closer.close_due_periods()
            except Exception as exc:
                log.exception("period close failed")
                errors.append(f"close: {exc}")
            try:
                attempts = len(self._invoices.retry_failed_payments())
            except Exception as exc:
                log.exception("payment retries failed")
                errors.append(f"retry: {exc}")
            if self._extra is not None:
                try:
                    self._extra()
                except Exception as exc:
                    log.exception("billing chore failed")
                    errors.append(f"extra: {exc}")
        return JobRun(closed_periods=closed, payment_attempts=attempts, errors=errors)

    def _loop(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self._interval_s):
                return
