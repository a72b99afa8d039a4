"""Buying prepaid credit with the card on file (SPEC §3).

A purchase charges the account's newest payment method through the
provider with an idempotency key (the caller's, or a generated one) in
three steps, so that no charge can go unrecorded:

1. commit a payments row in state PENDING holding the key (and the method);
2. charge, outside any transaction (a network call must not hold row locks);
3. in ONE transaction, under the account's billing row lock, mark the row
   SUCCEEDED together with the PURCHASE grant, its GRANT entry and the
   historical spend (so the tier rises in the same commit that took the
   money), or FAILED and raise ``PaymentRequired`` — no credit, no spend.

If the process dies after step 1 (before or after the card was charged),
the row stays PENDING: ``reconcile_pending`` (run by the period job) charges
it again with the same key, which the provider answers with the first
charge instead of a second one, and completes it. A charge the provider is
still processing (``payments/pending.py``) also leaves the row PENDING and
returns the purchase in state PENDING; reconcile finishes it later.

Replaying a key returns the first outcome and changes nothing: a final row
(unique by key) answers; a PENDING row is charged again with its key and
completed, exactly like reconcile. Should two calls race, the loser of the
insert reads the winner's row, and the completion re-reads the row under
the lock, so only one of them grants the credit.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.billing import repository as repo
from firebox.billing.credits import add_grant, new_id
from firebox.billing.invoice_repository import begin_write
from firebox.billing.models import PaymentMethodRow, PaymentRow
from firebox.billing.money import MICROS_PER_CENT, MICROS_PER_USD, format_usd
from firebox.billing.payments.pending import is_pending
from firebox.billing.payments.provider import ChargeResult, PaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.tiers import record_spend
from firebox.clock import Clock
from firebox.errors import (
    FailedPrecondition,
    InvalidArgument,
    PaymentRequired,
    ServiceUnavailable,
)
from firebox.store.database import Database

MIN_PURCHASE_MICROS = 1 * MICROS_PER_USD
MAX_PURCHASE_MICROS = 100_000 * MICROS_PER_USD
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,80}$")
PENDING, SUCCEEDED, FAILED = "PENDING", "SUCCEEDED", "FAILED"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CreditPurchase:
    """A credit purchase, SUCCEEDED (or PENDING while the provider still processes it)."""

    id: str  # the payment's id
    account_id: str
    amount_micros: int
    state: str  # SUCCEEDED | PENDING (no grant yet: grant_id is "")
    payment_method_id: str | None
    provider_ref: str
    grant_id: str
    idempotency_key: str  # the caller's key (or the generated one)
    create_time: datetime


def validate_amount(micros: int) -> None:
    """Purchases are whole cents from $1.00 to $100,000.00."""
    if micros < MIN_PURCHASE_MICROS or micros > MAX_PURCHASE_MICROS or micros % MICROS_PER_CENT:
        raise InvalidArgument(
            f"Invalid purchase amount {format_usd(micros)}: buy whole cents from "
            f"{format_usd(MIN_PURCHASE_MICROS)} to {format_usd(MAX_PURCHASE_MICROS)} USD.",
            code="invalid_amount",
            param="amount",
        )


def caller_key_or_new(idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return secrets.token_hex(16)
    if not _KEY.fullmatch(idempotency_key):
        raise InvalidArgument(
            "Invalid idempotency key: use 1-80 letters, digits, '.', '_', ':' or '-'.",
            code="invalid_idempotency_key",
            param="idempotencyKey",
        )
    return idempotency_key


def declined(account_id: str, code: str, message: str) -> PaymentRequired:
    return PaymentRequired(
        f"The payment was declined ({code}: {message}). No credit was added and nothing "
        f"was charged. Add another payment method (POST /v1/accounts/{account_id}/"
        "paymentMethods) and buy again.",
        code="payment_declined",
    )


@dataclass(frozen=True, slots=True)
class _Pending:
    """A PENDING payments row to charge (again) with its key."""

    payment_id: str
    account_id: str
    micros: int
    method_ref: str
    key: str


class Purchases:
    """Charges the card on file and grants the credit it bought."""

    def __init__(
        self, db: Database, clock: Clock, provider: PaymentProvider, book: PriceBook
    ) -> None:
        self._db = db
        self._clock = clock
        self._provider = provider
        self._book = book

    def purchase(self, account_id: str, micros: int, idempotency_key: str | None) -> CreditPurchase:
        """Buy ``micros`` of credit; see the module docstring for the guarantees."""
        validate_amount(micros)
        caller_key = caller_key_or_new(idempotency_key)
        key = f"purchase:{account_id}:{caller_key}"
        begun = self._begin(account_id, micros, key, caller_key)
        if isinstance(begun, CreditPurchase):
            return begun
        try:
            result = self._charge(begun)
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(
                f"The payment provider did not answer ({exc.message}). The purchase is "
                "pending and is completed automatically within minutes; do not buy again: "
                f"repeat this call with idempotencyKey {caller_key!r} to see its outcome.",
                code=exc.code,
            ) from exc
        return self._outcome(begun, self._complete(begun, result), caller_key)

    def reconcile_pending(self, older_than: timedelta = timedelta(minutes=1)) -> list[str]:
        """Charge again (same key: no second charge) and complete every PENDING purchase
        older than ``older_than``; returns the accounts whose purchase reached a final state.

        A row whose charge still fails (provider down) or still processes stays
        PENDING for the next run; one row's failure does not stop the others.
        """
        cutoff = self._clock.now() - older_than
        with self._db.transaction() as session:
            rows = session.scalars(
                select(PaymentRow)
                .where(
                    PaymentRow.purpose == "CREDIT_PURCHASE",
                    PaymentRow.state == PENDING,
                    PaymentRow.create_time <= cutoff,
                )
                .order_by(PaymentRow.create_time)
                .limit(500)
            ).all()
            todo = [self._pending_of(session, row) for row in rows]
        done: list[str] = []
        for pending in todo:
            try:
                state = self._complete(pending, self._charge(pending))
            except Exception:
                log.exception("reconciling pending purchase %s failed", pending.payment_id)
                continue
            if state != PENDING:
                done.append(pending.account_id)
        return done

    def _begin(
        self, account_id: str, micros: int, key: str, caller_key: str
    ) -> _Pending | CreditPurchase:
        """Commit the PENDING row (step 1), or answer a replay of ``key``."""
        try:
            with self._db.transaction() as session:
                earlier = repo.payment_by_key(session, key)
                if earlier is not None:
                    return self._replay(session, earlier, micros, caller_key)
                methods = repo.active_payment_methods(session, account_id)
                if not methods:
                    raise FailedPrecondition(
                        "The account has no payment method on file. Add one with POST "
                        f"/v1/accounts/{account_id}/paymentMethods, then buy credits.",
                        code="payment_method_required",
                    )
                payment = PaymentRow(
                    id=new_id("pay"),
                    account_id=account_id,
                    purpose="CREDIT_PURCHASE",
                    invoice_id=None,
                    payment_method_id=methods[0].id,
                    amount_micros=micros,
                    state=PENDING,
                    provider_ref="",
                    failure_code="",
                    failure_message="",
                    idempotency_key=key,
                    create_time=self._clock.now(),
                )
                session.add(payment)
                session.flush()
                return _Pending(payment.id, account_id, micros, methods[0].provider_ref, key)
        except IntegrityError:
            # A concurrent call with the same key inserted first: go on with its row.
            with self._db.transaction() as session:
                winner = repo.payment_by_key(session, key)
                if winner is None:
                    raise
                return self._replay(session, winner, micros, caller_key)

    def _pending_of(self, session: Session, payment: PaymentRow) -> _Pending:
        # The method may have been deleted since: the key still names the same charge.
        method = (
            session.get(PaymentMethodRow, payment.payment_method_id)
            if payment.payment_method_id is not None
            else None
        )
        return _Pending(
            payment.id,
            payment.account_id,
            int(payment.amount_micros),
            method.provider_ref if method is not None else "",
            payment.idempotency_key,
        )

    def _charge(self, pending: _Pending) -> ChargeResult:
        return self._provider.charge(
            pending.account_id,
            pending.method_ref,
            pending.micros // MICROS_PER_CENT,
            f"Firebox credits for account {pending.account_id}",
            pending.key,
        )

    def _complete(self, pending: _Pending, result: ChargeResult) -> str:
        """Step 3: the charge's outcome in one transaction, unless another call did it.

        Returns the row's state afterwards (PENDING while the provider still processes).
        """
        now = self._clock.now()
        with self._db.transaction() as session:
            begin_write(session)  # SQLite: serialize completions (FOR UPDATE is a no-op there)
            repo.lock_billing(session, pending.account_id)
            payment = session.scalar(
                select(PaymentRow)
                .where(PaymentRow.id == pending.payment_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            assert payment is not None
            if payment.state != PENDING or is_pending(result):
                return payment.state
            payment.provider_ref = result.provider_ref[:255]
            payment.failure_code = result.failure_code[:64]
            payment.failure_message = result.failure_message[:512]
            if not result.succeeded:
                payment.state = FAILED
                return FAILED
            payment.state = SUCCEEDED
            add_grant(
                session,
                pending.account_id,
                source="PURCHASE",
                micros=pending.micros,
                reason="Credit purchase",
                reference=f"purchase:{payment.id}",
                expire_time=None,
                now=now,
            )
            record_spend(session, pending.account_id, pending.micros, self._book)
            return SUCCEEDED

    def _outcome(self, pending: _Pending, state: str, caller_key: str) -> CreditPurchase:
        with self._db.transaction() as session:
            payment = session.get(PaymentRow, pending.payment_id)
            assert payment is not None
            if state == PENDING:
                return _purchase(payment, "", caller_key)
            done = self._replay(session, payment, pending.micros, caller_key)
            assert isinstance(done, CreditPurchase)
            return done

    def _replay(
        self, session: Session, payment: PaymentRow, micros: int, caller_key: str
    ) -> CreditPurchase | _Pending:
        """The outcome of a key: the purchase, the same decline, or a PENDING row to charge."""
        if payment.amount_micros != micros:
            raise InvalidArgument(
                f"Idempotency key {caller_key!r} was used for a purchase of "
                f"{format_usd(payment.amount_micros)} USD; use a new key for another amount.",
                code="idempotency_key_reused",
                param="idempotencyKey",
            )
        if payment.state == PENDING:
            return self._pending_of(session, payment)
        if payment.state != SUCCEEDED:
            raise declined(payment.account_id, payment.failure_code, payment.failure_message)
        grant = repo.grant_by_reference(session, f"purchase:{payment.id}")
        return _purchase(payment, grant.id if grant is not None else "", caller_key)


def _purchase(payment: PaymentRow, grant_id: str, caller_key: str) -> CreditPurchase:
    return CreditPurchase(
        id=payment.id,
        account_id=payment.account_id,
        amount_micros=int(payment.amount_micros),
        state=payment.state,
        payment_method_id=payment.payment_method_id,
        provider_ref=payment.provider_ref,
        grant_id=grant_id,
        idempotency_key=caller_key,
        create_time=payment.create_time,
    )
