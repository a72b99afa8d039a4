"""Payment methods on file: attached through the provider, soft-deleted.

A method is attached at the provider first (which validates it) and only
then recorded, so the database never lists a card the provider refused. A
card that attaches but declines every charge (``pm_card_chargeDeclined``)
is accepted here, as Stripe accepts it: the decline shows at the charge.
Deleting keeps the row (``delete_time``) so past payments still name the
method they used; the newest method not deleted is the one charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from firebox.billing import repository as repo
from firebox.billing.credits import new_id
from firebox.billing.models import PaymentMethodRow
from firebox.billing.payments.provider import PaymentDeclined, PaymentProvider
from firebox.clock import Clock
from firebox.errors import InvalidArgument, NotFound
from firebox.store.database import Database


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    """A payment method on file, as the account sees it (never the full card)."""

    id: str
    account_id: str
    provider: str  # test | stripe
    provider_ref: str  # the provider's id (pm_…)
    brand: str
    last4: str
    create_time: datetime

    @classmethod
    def of(cls, row: PaymentMethodRow) -> PaymentMethod:
        return cls(
            id=row.id,
            account_id=row.account_id,
            provider=row.provider,
            provider_ref=row.provider_ref,
            brand=row.brand,
            last4=row.last4,
            create_time=row.create_time,
        )


def payment_method_not_found(account_id: str, method_id: str) -> NotFound:
    return NotFound(
        f"Payment method {method_id!r} was not found in account {account_id!r}; list them "
        f"with GET /v1/accounts/{account_id}/paymentMethods.",
        code="payment_method_not_found",
    )


class PaymentMethods:
    """Adds, lists and deletes an account's payment methods."""

    def __init__(self, db: Database, clock: Clock, provider: PaymentProvider) -> None:
        self._db = db
        self._clock = clock
        self._provider = provider

    def add(self, account_id: str, payment_method: str) -> PaymentMethod:
        """Attach ``payment_method`` (a provider token such as ``pm_card_visa``) and keep it."""
        token = payment_method.strip()
        if not token or len(token) > 255:
            raise InvalidArgument(
                "Give the payment method as the provider's token, such as pm_card_visa.",
                code="invalid_payment_method",
                param="paymentMethod",
            )
        try:
            attached = self._provider.attach(account_id, token)
        except PaymentDeclined as exc:
            raise InvalidArgument(
                f"The payment method was refused: {exc.message}",
                code="invalid_payment_method",
                param="paymentMethod",
            ) from exc
        row = PaymentMethodRow(
            id=new_id("pm"),
            account_id=account_id,
            provider=self._provider.name,
            provider_ref=attached.provider_ref,
            brand=attached.brand[:32],
            last4=attached.last4[:4],
            create_time=self._clock.now(),
            delete_time=None,
        )
        with self._db.transaction() as session:
            session.add(row)
        return PaymentMethod.of(row)

    def on_file(self, account_id: str) -> list[PaymentMethod]:
        """The methods on file, newest (the one charged) first."""
        with self._db.transaction() as session:
            return [PaymentMethod.of(r) for r in repo.active_payment_methods(session, account_id)]

    def delete(self, account_id: str, method_id: str) -> None:
        """Detach the method at the provider, then mark it deleted."""
        with self._db.transaction() as session:
            row = repo.get_payment_method(session, account_id, method_id)
            if row is None:
                raise payment_method_not_found(account_id, method_id)
            provider_ref = row.provider_ref
        self._provider.detach(account_id, provider_ref)
        with self._db.transaction() as session:
            row = repo.get_payment_method(session, account_id, method_id)
            if row is None:
                raise payment_method_not_found(account_id, method_id)
            row.delete_time = self._clock.now()
