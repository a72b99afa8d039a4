"""The Stripe payment provider, over the official ``stripe`` package.

One Stripe customer per Firebox account, found by its metadata
(``firebox_account``) or created with an idempotency key derived from the
account id, so two replicas racing to create it make one. Cards are attached
with ``payment_methods.attach``; charges are PaymentIntents created with
``confirm=True, off_session=True`` (the customer is not present: credit
purchases and month-end invoices run on a card on file) and the caller's
idempotency key, so a retried charge never charges twice.

A declined card is an answer, not an error: ``charge`` returns a
``ChargeResult`` with ``succeeded=False`` and Stripe's reason. A
``processing`` PaymentIntent is not final: it is reported as pending
(``payments/pending.py``) after one fresh read of the intent (a replayed key
gets Stripe's first, processing answer back, so the read tells how it ended).
Any other Stripe error (unreachable, rate limited, a key clash, bad
credentials) is a ``ServiceUnavailable`` (``payment_provider_unavailable``).
"""

from __future__ import annotations

import threading
from typing import Any

import stripe

from firebox.billing.payments.pending import PROCESSING
from firebox.billing.payments.provider import AttachedMethod, ChargeResult, PaymentDeclined
from firebox.errors import ServiceUnavailable

_ACCOUNT_KEY = "firebox_account"


def _unavailable(exc: stripe.StripeError) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The payment provider (Stripe) could not be reached or refused our credentials: "
        f"{exc.user_message or exc}. Try again later; operators: check FIREBOX_STRIPE_API_KEY.",
        code="payment_provider_unavailable",
    )


def failure_code(exc: stripe.StripeError) -> str:
    """Stripe's reason for a declined charge, spelled like the test provider's codes.

    A decline carries ``code="card_declined"`` and a more precise
    ``decline_code``; the precise one is used unless it is the uninformative
    ``generic_decline`` (``insufficient_funds`` stays ``insufficient_funds``).
    """
    error = exc.error
    decline = getattr(error, "decline_code", None) if error is not None else None
    if decline and decline != "generic_decline":
        return str(decline)
    return str(exc.code or "card_declined")


class StripePaymentProvider:
    """A ``PaymentProvider`` backed by Stripe."""

    name = "stripe"

    def __init__(self, api_key: str, client: stripe.StripeClient | None = None) -> None:
        self._client = client or stripe.StripeClient(api_key, max_network_retries=2)
        self._lock = threading.Lock()
        self._customers: dict[str, str] = {}  # account id -> Stripe customer id

    def customer_id(self, account_id: str) -> str:
        """The Stripe customer of ``account_id``, found by metadata or created once."""
        with self._lock:
            known = self._customers.get(account_id)
        if known is not None:
            return known
        try:
            found = self._client.v1.customers.search(
                {"query": f"metadata['{_ACCOUNT_KEY}']:'{account_id}'", "limit": 1}
            )
            if found.data:
                customer_id = str(found.data[0].id)
            else:
                created = self._client.v1.customers.create(
                    {
                        "description": f"Firebox account {account_id}",
                        "metadata": {_ACCOUNT_KEY: account_id},
                    },
                    {"idempotency_key": f"firebox-customer-{account_id}"},
                )
                customer_id = str(created.id)
        except stripe.StripeError as exc:  # unreachable, rate-limited, bad key, key clash…
            raise _unavailable(exc) from exc
        with self._lock:
            self._customers[account_id] = customer_id
        return customer_id

    def attach(self, account_id: str, payment_method: str) -> AttachedMethod:
        customer = self.customer_id(account_id)
        try:
            method = self._client.v1.payment_methods.attach(payment_method, {"customer": customer})
        except (stripe.CardError, stripe.InvalidRequestError) as exc:
            raise PaymentDeclined(
                "invalid_payment_method",
                f"Stripe refused payment method {payment_method!r}: {exc.user_message or exc}",
            ) from exc
        except stripe.StripeError as exc:  # unreachable, rate-limited, bad key, key clash…
            raise _unavailable(exc) from exc
        card: Any = getattr(method, "card", None)
        return AttachedMethod(
            provider_ref=str(method.id),
            brand=str(getattr(card, "brand", "") or ""),
            last4=str(getattr(card, "last4", "") or ""),
        )

    def detach(self, account_id: str, provider_ref: str) -> None:
        try:
            self._client.v1.payment_methods.detach(provider_ref)
        except stripe.InvalidRequestError:
            return None  # already detached or gone: the goal is reached
        except stripe.StripeError as exc:  # unreachable, rate-limited, bad key, key clash…
            raise _unavailable(exc) from exc

    def charge(
        self,
        account_id: str,
        provider_ref: str,
        amount_cents: int,
        description: str,
        idempotency_key: str,
    ) -> ChargeResult:
        customer = self.customer_id(account_id)
        try:
            intent = self._client.v1.payment_intents.create(
                {
                    "amount": amount_cents,
                    "currency": "usd",
                    "customer": customer,
                    "payment_method": provider_ref,
                    "confirm": True,
                    "off_session": True,
                    "description": description,
                    "metadata": {_ACCOUNT_KEY: account_id},
                },
                {"idempotency_key": idempotency_key},
            )
        except (stripe.CardError, stripe.InvalidRequestError) as exc:
            return ChargeResult(
                succeeded=False,
                provider_ref=_intent_id(exc),
                failure_code=failure_code(exc),
                failure_message=str(exc.user_message or exc),
            )
        except stripe.StripeError as exc:  # unreachable, rate-limited, bad key, key clash…
            raise _unavailable(exc) from exc
        status = str(intent.status)
        if status == "processing":
            # A replayed key answers the first (processing) response again: ask for now.
            try:
                status = str(self._client.v1.payment_intents.retrieve(str(intent.id)).status)
            except stripe.StripeError as exc:
                raise _unavailable(exc) from exc
        if status == "succeeded":
            return ChargeResult(succeeded=True, provider_ref=str(intent.id))
        if status == "processing":
            return ChargeResult(
                succeeded=False,
                provider_ref=str(intent.id),
                failure_code=PROCESSING,
                failure_message="Stripe is still processing the payment; it is not final yet.",
            )
        return ChargeResult(
            succeeded=False,
            provider_ref=str(intent.id),
            failure_code=f"payment_{status}",
            failure_message=(
                f"Stripe left the payment in state {status!r}; the card needs the "
                "customer's action. Use another payment method."
            ),
        )


def _intent_id(exc: stripe.StripeError) -> str:
    """The id of the PaymentIntent a declined charge created, when Stripe names it."""
    body = exc.json_body or {}
    error = body.get("error") if isinstance(body, dict) else None
    intent = error.get("payment_intent") if isinstance(error, dict) else None
    if isinstance(intent, dict) and intent.get("id"):
        return str(intent["id"])
    return ""
