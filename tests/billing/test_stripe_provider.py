"""The Stripe adapter against recorded request shapes, without any network.

``stripe.StripeClient`` is given an ``HTTPClient`` that records every request
and answers canned JSON, so these tests pin the exact method, path, form
fields and idempotency keys the adapter sends, and how it maps the answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from firebox.billing.payments.pending import is_pending
from firebox.billing.payments.provider import ChargeResult, PaymentDeclined
from firebox.billing.payments.stripe_provider import StripePaymentProvider
from firebox.errors import ServiceUnavailable


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    headers: dict[str, str]


class RecordingHTTPClient(stripe.HTTPClient):
    """Records requests; answers from a queue of (status, JSON) per (method, path)."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.answers: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}

    def answer(self, method: str, path: str, status: int, body: dict[str, Any]) -> None:
        self.answers.setdefault((method, path), []).append((status, body))

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        parts = urlsplit(url)
        raw = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        self.requests.append(
            Recorded(
                method=method.upper(),
                path=parts.path,
                query=parse_qs(parts.query),
                form=parse_qs(raw),
                headers=dict(headers or {}),
            )
        )
        queue = self.answers.get((method.upper(), parts.path))
        if not queue:
            raise AssertionError(f"unexpected request {method} {parts.path}")
        status, body = queue.pop(0)
        return json.dumps(body), status, {"Request-Id": "req_test"}

    def close(self) -> None:
        return None


def provider_with(http: RecordingHTTPClient) -> StripePaymentProvider:
    client = stripe.StripeClient("sk_test_123", http_client=http, max_network_retries=0)
    return StripePaymentProvider("sk_test_123", client=client)


def customer(cid: str = "cus_1") -> dict[str, Any]:
    return {"id": cid, "object": "customer", "metadata": {"firebox_account": "acme"}}


def empty_search() -> dict[str, Any]:
    return {"object": "search_result", "data": [], "has_more": False, "url": "/v1/customers/search"}


def card_method(pm: str = "pm_1", brand: str = "visa", last4: str = "4242") -> dict[str, Any]:
    return {
        "id": pm,
        "object": "payment_method",
        "type": "card",
        "customer": "cus_1",
        "card": {"brand": brand, "last4": last4},
    }


def test_attach_creates_the_customer_once_and_attaches() -> None:
    http = RecordingHTTPClient()
    http.answer("GET", "/v1/customers/search", 200, empty_search())
    http.answer("POST", "/v1/customers", 200, customer())
    http.answer("POST", "/v1/payment_methods/pm_card_visa/attach", 200, card_method())
    http.answer(
        "POST", "/v1/payment_methods/pm_card_amex/attach", 200, card_method("pm_2", "amex", "8431")
    )
    provider = provider_with(http)

    first = provider.attach("acme", "pm_card_visa")
    second = provider.attach("acme", "pm_card_amex")

    assert (first.provider_ref, first.brand, first.last4) == ("pm_1", "visa", "4242")
    assert (second.provider_ref, second.brand, second.last4) == ("pm_2", "amex", "8431")
    shapes = [(r.method, r.path) for r in http.requests]
    assert shapes == [
        ("GET", "/v1/customers/search"),
        ("POST", "/v1/customers"),
        ("POST", "/v1/payment_methods/pm_card_visa/attach"),
        ("POST", "/v1/payment_methods/pm_card_amex/attach"),
    ]
    search, create, attach, _ = http.requests
    assert search.query["query"] == ["metadata['firebox_account']:'acme'"]
    assert create.form["metadata[firebox_account]"] == ["acme"]
    assert create.headers["Idempotency-Key"] == "firebox-customer-acme"
    assert attach.form == {"customer": ["cus_1"]}


def test_attach_reuses_a_customer_found_by_metadata() -> None:
    http = RecordingHTTPClient()
    found = empty_search() | {"data": [customer("cus_existing")]}
    http.answer("GET", "/v1/customers/search", 200, found)
    http.answer("POST", "/v1/payment_methods/pm_card_visa/attach", 200, card_method())
    provider_with(http).attach("acme", "pm_card_visa")
    assert [(r.method, r.path) for r in http.requests] == [
        ("GET", "/v1/customers/search"),
        ("POST", "/v1/payment_methods/pm_card_visa/attach"),
    ]
    assert http.requests[1].form == {"customer": ["cus_existing"]}


def test_unknown_payment_method_is_refused_at_attach() -> None:
    http = RecordingHTTPClient()
    http.answer("GET", "/v1/customers/search", 200, empty_search() | {"data": [customer()]})
    missing = {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": "No such PaymentMethod: 'pm_nope'",
            "param": "payment_method",
        }
    }
    http.answer("POST", "/v1/payment_methods/pm_nope/attach", 400, missing)
    with pytest.raises(PaymentDeclined) as caught:
        provider_with(http).attach("acme", "pm_nope")
    assert caught.value.code == "invalid_payment_method"
    assert "pm_nope" in caught.value.message


def charge_setup(http: RecordingHTTPClient) -> StripePaymentProvider:
    http.answer("GET", "/v1/customers/search", 200, empty_search() | {"data": [customer()]})
    return provider_with(http)


def test_charge_sends_an_off_session_confirmed_intent_with_the_key() -> None:
    http = RecordingHTTPClient()
    provider = charge_setup(http)
    intent = {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 10000}
    http.answer("POST", "/v1/payment_intents", 200, intent)

    result = provider.charge("acme", "pm_1", 10000, "Firebox credits", "purchase:acme:k1")

    assert result == ChargeResult(succeeded=True, provider_ref="pi_1")
    sent = http.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.form == {
        "amount": ["10000"],
        "currency": ["usd"],
        "customer": ["cus_1"],
        "payment_method": ["pm_1"],
        "confirm": ["true"],
        "off_session": ["true"],
        "description": ["Firebox credits"],
        "metadata[firebox_account]": ["acme"],
    }
    assert sent.headers["Idempotency-Key"] == "purchase:acme:k1"


@pytest.mark.parametrize(
    ("decline_code", "expected"),
    [("generic_decline", "card_declined"), ("insufficient_funds", "insufficient_funds")],
)
def test_a_card_error_is_a_declined_result(decline_code: str, expected: str) -> None:
    http = RecordingHTTPClient()
    provider = charge_setup(http)
    declined = {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": "Your card was declined.",
            "payment_intent": {"id": "pi_declined", "object": "payment_intent"},
        }
    }
    http.answer("POST", "/v1/payment_intents", 402, declined)

    result = provider.charge("acme", "pm_1", 500, "Firebox credits", "k2")

    assert result == ChargeResult(
        succeeded=False,
        provider_ref="pi_declined",
        failure_code=expected,
        failure_message="Your card was declined.",
    )


def test_an_intent_that_needs_action_is_not_a_success() -> None:
    http = RecordingHTTPClient()
    provider = charge_setup(http)
    intent = {"id": "pi_3", "object": "payment_intent", "status": "requires_action"}
    http.answer("POST", "/v1/payment_intents", 200, intent)
    result = provider.charge("acme", "pm_1", 500, "x", "k3")
    assert (result.succeeded, result.provider_ref, result.failure_code) == (
        False,
        "pi_3",
        "payment_requires_action",
    )


def test_detach_posts_detach_and_ignores_an_already_detached_method() -> None:
    http = RecordingHTTPClient()
    http.answer("POST", "/v1/payment_methods/pm_1/detach", 200, card_method())
    gone = {"error": {"type": "invalid_request_error", "message": "not attached"}}
    http.answer("POST", "/v1/payment_methods/pm_1/detach", 400, gone)
    provider = provider_with(http)
    provider.detach("acme", "pm_1")
    provider.detach("acme", "pm_1")
    assert [(r.method, r.path) for r in http.requests] == [
        ("POST", "/v1/payment_methods/pm_1/detach"),
    ] * 2


def test_bad_credentials_are_service_unavailable() -> None:
    http = RecordingHTTPClient()
    bad_key = {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}
    http.answer("GET", "/v1/customers/search", 401, bad_key)
    with pytest.raises(ServiceUnavailable) as caught:
        provider_with(http).attach("acme", "pm_card_visa")
    assert caught.value.code == "payment_provider_unavailable"


def test_a_processing_intent_is_pending_and_a_replay_reads_how_it_ended() -> None:
    http = RecordingHTTPClient()
    provider = charge_setup(http)
    processing = {"id": "pi_p", "object": "payment_intent", "status": "processing"}
    http.answer("POST", "/v1/payment_intents", 200, processing)
    http.answer("GET", "/v1/payment_intents/pi_p", 200, processing)
    http.answer("POST", "/v1/payment_intents", 200, processing)  # Stripe replays the key
    http.answer("GET", "/v1/payment_intents/pi_p", 200, processing | {"status": "succeeded"})

    first = provider.charge("acme", "pm_1", 500, "x", "k-p")
    again = provider.charge("acme", "pm_1", 500, "x", "k-p")

    assert (first.succeeded, first.provider_ref, first.failure_code) == (
        False,
        "pi_p",
        "payment_processing",
    )
    assert is_pending(first)
    assert again == ChargeResult(succeeded=True, provider_ref="pi_p")
    assert [r.headers.get("Idempotency-Key") for r in http.requests if r.method == "POST"] == [
        "k-p",
        "k-p",
    ]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (429, "invalid_request_error"),  # rate limited
        (409, "idempotency_error"),  # the same key in flight or reused
        (403, "invalid_request_error"),  # a restricted key lacks the permission
    ],
)
def test_other_stripe_errors_are_service_unavailable(status: int, error_type: str) -> None:
    http = RecordingHTTPClient()
    provider = charge_setup(http)
    body = {"error": {"type": error_type, "message": "try later", "code": "rate_limit"}}
    http.answer("POST", "/v1/payment_intents", status, body)
    with pytest.raises(ServiceUnavailable) as caught:
        provider.charge("acme", "pm_1", 500, "x", "k4")
    assert caught.value.code == "payment_provider_unavailable"


def test_a_connection_failure_is_service_unavailable() -> None:
    class Broken(RecordingHTTPClient):
        def request(self, *args: Any, **kwargs: Any) -> tuple[str, int, Mapping[str, str]]:
            raise stripe.APIConnectionError("connection reset")

    with pytest.raises(ServiceUnavailable) as caught:
        provider_with(Broken()).attach("acme", "pm_card_visa")
    assert caught.value.code == "payment_provider_unavailable"
