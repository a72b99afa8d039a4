"""Billing routes under ``/v1/accounts/{account}``: limits, cards, credits, usage, invoices.

Thin, like every slice's routes: parse (USD strings through ``parse_usd``,
RFC 3339 times), call ``BillingService`` with the principal (it authorizes:
another account's billing is a 404, a missing role a 403), return a schema.
Handlers are plain ``def`` so the thread pool runs their database calls.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request

from firebox.billing.money import parse_usd
from firebox.billing.overview import month_bounds
from firebox.billing.payment_methods import payment_method_not_found
from firebox.billing.schemas import (
    Billing,
    BillingUpdate,
    CreditGrant,
    CreditGrantList,
    CreditGrantRequest,
    CreditPurchase,
    CreditPurchaseRequest,
    Invoice,
    InvoiceList,
    PaymentMethod,
    PaymentMethodCreate,
    PaymentMethodList,
    Usage,
)
from firebox.billing.service import BillingService
from firebox.clock import Clock
from firebox.errors import InvalidArgument
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing, ListParams
from firebox.paging import decode_token, next_token, page_size
from firebox.wire import time_out_of_range

_DUMP: dict[str, Any] = {"response_model_by_alias": True}
_T = TypeVar("_T")


def _billing(request: Request) -> BillingService:
    service: BillingService = request.app.state.services.billing
    return service


def _clock(request: Request) -> Clock:
    clock: Clock = request.app.state.services.clock
    return clock


def parse_time(value: str | None, param: str) -> datetime | None:
    """An RFC 3339 time with a zone, or a 400 naming ``param``."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidArgument(
            f"Invalid {param} {value!r}: give an RFC 3339 time with a zone, such as "
            "2026-01-01T00:00:00Z.",
            code="invalid_time",
            param=param,
        )
    reason = time_out_of_range(parsed)
    if reason is not None:
        raise InvalidArgument(
            f"Invalid {param} {value!r}: {reason}.", code="invalid_time", param=param
        )
    return parsed


def _page(items: list[_T], ids: list[str], listing: ListParams) -> tuple[list[_T], str]:
    """One page of a short, fully loaded list (cards, grants), cut by id like keyset pages."""
    size = page_size(listing.page_size)
    after = decode_token(listing.page_token)
    start = ids.index(after) + 1 if after in ids else 0
    chunk = items[start : start + size]
    return chunk, next_token(ids[start : start + size], size) if start + size < len(ids) else ""


def get_billing(request: Request, principal: CurrentPrincipal, account: str) -> Billing:
    """Tier, spend limit, month-to-date usage, credit balance, cards, suspension."""
    return Billing.of(_billing(request).overview(principal, account))


def update_billing(
    request: Request, principal: CurrentPrincipal, account: str, body: BillingUpdate
) -> Billing:
    """Set the account's own limit; the operator also sets custom limits / unlimited."""
    sent = body.model_fields_set
    if not sent:
        raise InvalidArgument(
            "Nothing to update: send accountSpendLimit (or, as the operator, "
            "customSpendLimit or unlimited).",
            code="empty_update",
        )
    service = _billing(request)
    operator_fields = sent & {"custom_spend_limit", "unlimited"}
    if operator_fields:
        principal.require_operator()
    own = _limit(body.account_spend_limit, "accountSpendLimit")
    custom = _limit(body.custom_spend_limit, "customSpendLimit")
    view = None
    if "account_spend_limit" in sent:
        view = service.set_account_spend_limit(principal, account, own)
    if operator_fields:
        current = view or service.overview(principal, account)
        if "custom_spend_limit" not in sent:
            custom = None if body.unlimited else current.custom_spend_limit_micros
        if "unlimited" in sent:
            unlimited = bool(body.unlimited)
        else:
            unlimited = current.unlimited and custom is None
        view = service.set_custom_spend_limit(principal, account, custom, unlimited)
    assert view is not None
    return Billing.of(view)


def create_payment_method(
    request: Request, principal: CurrentPrincipal, account: str, body: PaymentMethodCreate
) -> PaymentMethod:
    """Put a card on file (test provider: Stripe's test cards, e.g. pm_card_visa)."""
    added = _billing(request).add_payment_method(principal, account, body.payment_method)
    return PaymentMethod.of(added)


def list_payment_methods(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> PaymentMethodList:
    """The cards on file, newest (the one charged) first."""
    methods = _billing(request).list_payment_methods(principal, account)
    page, token = _page(methods, [m.id for m in methods], listing)
    return PaymentMethodList(
        payment_methods=[PaymentMethod.of(m) for m in page],
        next_page_token=token,
        total_size=len(methods),
    )


def get_payment_method(
    request: Request, principal: CurrentPrincipal, account: str, method: str
) -> PaymentMethod:
    for found in _billing(request).list_payment_methods(principal, account):
        if found.id == method:
            return PaymentMethod.of(found)
    raise payment_method_not_found(account, method)


def delete_payment_method(
    request: Request, principal: CurrentPrincipal, account: str, method: str
) -> dict[str, Any]:
    _billing(request).delete_payment_method(principal, account, method)
    return {}


def purchase_credits(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: CreditPurchaseRequest,
    idempotency_header: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> CreditPurchase:
    """Buy credit with the card on file; a declined card is a 402 and changes nothing."""
    micros = parse_usd(body.amount, "amount")
    key = body.idempotency_key
    if idempotency_header and key and idempotency_header != key:
        raise InvalidArgument(
            "The Idempotency-Key header and idempotencyKey differ; send one of them.",
            code="idempotency_key_mismatch",
            param="idempotencyKey",
        )
    key = key or idempotency_header or None
    bought = _billing(request).purchase_credits(principal, account, micros, key)
    return CreditPurchase.of(bought)


def grant_credits(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: CreditGrantRequest,
    idempotency_header: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> CreditGrant:
    """Operator only: give credit, optionally expiring at ``expireTime``."""
    principal.require_operator()
    micros = parse_usd(body.amount, "amount")
    granted = _billing(request).grant_credits(
        principal,
        account,
        micros,
        body.reason,
        body.expire_time,
        idempotency_key=idempotency_header,
    )
    return CreditGrant.of(granted)


def list_credits(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> CreditGrantList:
    """Credit grants (free, purchased, operator), newest first, with what is left."""
    grants = _billing(request).list_credit_grants(principal, account)
    page, token = _page(grants, [g.id for g in grants], listing)
    return CreditGrantList(
        credits=[CreditGrant.of(g) for g in page],
        next_page_token=token,
        total_size=len(grants),
    )


def get_usage(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    start_time: Annotated[str | None, Query(alias="startTime")] = None,
    end_time: Annotated[str | None, Query(alias="endTime")] = None,
    group_by: Annotated[str, Query(alias="groupBy")] = "model",
) -> Usage:
    """Usage in [startTime, endTime) (default: this UTC month) by model, day or kind."""
    month_start, month_end = month_bounds(_clock(request).now())
    start = parse_time(start_time, "startTime") or month_start
    end = parse_time(end_time, "endTime") or month_end
    report = _billing(request).usage(principal, account, start, end, group_by)
    return Usage.of(report)


def list_invoices(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> InvoiceList:
    """The account's invoices, newest month first (lines only on a single invoice)."""
    page = _billing(request).list_invoices(
        principal, account, listing.page_size, listing.page_token
    )
    return InvoiceList.of(page)


def get_invoice(
    request: Request, principal: CurrentPrincipal, account: str, invoice: str
) -> Invoice:
    return Invoice.of(_billing(request).get_invoice(principal, account, invoice))


def pay_invoice(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    invoice: str,
) -> Invoice:
    """Charge an open or failed invoice now; a decline is a 402 ``payment_declined``."""
    return Invoice.of(_billing(request).pay_invoice(principal, account, invoice))


_ROUTES: tuple[tuple[str, str, Callable[..., Any], type[Any] | None], ...] = (
    ("GET", "/billing", get_billing, Billing),
    ("PATCH", "/billing", update_billing, Billing),
    ("POST", "/paymentMethods", create_payment_method, PaymentMethod),
    ("GET", "/paymentMethods", list_payment_methods, PaymentMethodList),
    ("GET", "/paymentMethods/{method}", get_payment_method, PaymentMethod),
    ("DELETE", "/paymentMethods/{method}", delete_payment_method, None),
    ("POST", "/paymentMethods/{method}:delete", delete_payment_method, None),
    ("POST", "/credits:purchase", purchase_credits, CreditPurchase),
    ("POST", "/credits:grant", grant_credits, CreditGrant),
    ("GET", "/credits", list_credits, CreditGrantList),
    ("GET", "/usage", get_usage, Usage),
    ("GET", "/invoices", list_invoices, InvoiceList),
    ("GET", "/invoices/{invoice}", get_invoice, Invoice),
    ("POST", "/invoices/{invoice}:pay", pay_invoice, Invoice),
)


def build_router() -> APIRouter:
    """The routes of account billing, under ``/v1/accounts/{account}``."""
    router = APIRouter(prefix="/v1/accounts/{account}", tags=["billing"])
    for method, path, handler, model in _ROUTES:
        router.add_api_route(path, handler, methods=[method], response_model=model, **_DUMP)
    return router


def _limit(text: str | None, param: str) -> int | None:
    return None if text is None else parse_usd(text, param)
