"""Buying prepaid credit with the card on file (SPEC §3).

A purchase charges the account's newest payment method through the
provider, outside any database transaction (a network call must not hold
row locks), with an idempotency key: the caller's, or a generated one.
Then, in ONE transaction: the payments row, and on success the PURCHASE
grant with its GRANT entry and the historical spend (so the tier rises in
the same commit that took the money). A declined charge writes only a
FAILED payments row and raises ``PaymentRequired`` — no credit, no spend.

Replaying a key returns the first outcome and changes nothing: the stored
payments row (unique by key) answers, and should two replays race, the
provider answers both with the same charge and the loser of the insert
reads the winner's row. If the process dies between the charge and the
commit, retrying with the same key completes the purchase without a
second charge (the provider returns the first one).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.billing import repository as repo
from firebox.billing.credits import add_grant, new_id
from firebox.billing.models import PaymentRow
from firebox.billing.money import MICROS_PER_CENT, MICROS_PER_USD, format_usd
from firebox.billing.payments.provider import ChargeResult, PaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.tiers import record_spend
from firebox.clock import Clock
from firebox.errors import FailedPrecondition, InvalidArgument, PaymentRequired
from firebox.store.database import Database

MIN_PURCHASE_MICROS = 1 * MICROS_PER_USD
MAX_PURCHASE_MICROS = 100_000 * MICROS_PER_USD
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,80}$")


@dataclass(frozen=True, slots=True)
class CreditPurchase:
    """A succeeded credit purchase; a replay of its key returns it unchanged."""

    id: str  # the payment's id
    account_id: str
    amount_micros: int
    state: str  # SUCCEEDED
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
            method_id, method_ref = methods[0].id, methods[0].provider_ref
        result = self._provider.charge(
            account_id,
            method_ref,
            micros // MICROS_PER_CENT,
            f"Firebox credits for account {account_id}",
            key,
        )
        try:
            done = self._record(account_id, micros, method_id, result, key, caller_key)
        except IntegrityError:
            with self._db.transaction() as session:
                winner = repo.payment_by_key(session, key)
                if winner is None:
                    raise
                return self._replay(session, winner, micros, caller_key)
        if done is None:
            raise declined(account_id, result.failure_code, result.failure_message)
        return done

    def _record(
        self,
        account_id: str,
        micros: int,
        method_id: str,
        result: ChargeResult,
        key: str,
        caller_key: str,
    ) -> CreditPurchase | None:
        """Write the charge's outcome in one transaction; ``None`` when it was declined."""
        now = self._clock.now()
        with self._db.transaction() as session:
            repo.lock_billing(session, account_id)
            payment = PaymentRow(
                id=new_id("pay"),
                account_id=account_id,
                purpose="CREDIT_PURCHASE",
                invoice_id=None,
                payment_method_id=method_id,
                amount_micros=micros,
                state="SUCCEEDED" if result.succeeded else "FAILED",
                provider_ref=result.provider_ref[:255],
                failure_code=result.failure_code[:64],
                failure_message=result.failure_message[:512],
                idempotency_key=key,
                create_time=now,
            )
            session.add(payment)
            session.flush()
            if not result.succeeded:
                return None
            grant = add_grant(
                session,
                account_id,
                source="PURCHASE",
                micros=micros,
                reason="Credit purchase",
                reference=f"purchase:{payment.id}",
                expire_time=None,
                now=now,
            )
            record_spend(session, account_id, micros, self._book)
            return _purchase(payment, grant.id, caller_key)

    def _replay(
        self, session: Session, payment: PaymentRow, micros: int, caller_key: str
    ) -> CreditPurchase:
        """The first outcome of a key: the same purchase, or the same decline."""
        if payment.amount_micros != micros:
            raise InvalidArgument(
                f"Idempotency key {caller_key!r} was used for a purchase of "
                f"{format_usd(payment.amount_micros)} USD; use a new key for another amount.",
                code="idempotency_key_reused",
                param="idempotencyKey",
            )
        if payment.state != "SUCCEEDED":
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
