"""Billing on the command line: spend limits, cards, credits, invoices, usage.

``get|update billing``, ``create|list|delete payment-method(s)``, ``buy credits``,
``list credits``, ``list invoices``, ``get|pay invoice``, ``get usage``, and the
operator's ``billing close-period|advance-clock|clock|grant-credits``. Amounts are
US dollars as typed ("20", "100.00"): the server checks them, so the CLI sends
the text unchanged and never rounds through a float.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

import typer

from firebox.cli.client import segment
from firebox.cli.commands.api_keys import rfc3339
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.errors import UsageError
from firebox.cli.output import Column, short_names
from firebox.cli.verbs import Verbs

PAYMENT_METHOD_COLUMNS = (
    Column("ID", "id"),
    Column("BRAND", "brand"),
    Column("LAST4", "last4"),
    Column("PROVIDER", "provider"),
    Column("CREATED", "createTime"),
)
INVOICE_COLUMNS = (
    Column("ID", "id"),
    Column("PERIOD", "period"),
    Column("STATE", "state"),
    Column("USAGE", "usage"),
    Column("CREDITS APPLIED", "creditsApplied"),
    Column("TOTAL", "total"),
    Column("ATTEMPTS", "attemptCount"),
    Column("PAID", "paidTime"),
)
CREDIT_COLUMNS = (
    Column("ID", "id"),
    Column("SOURCE", "source"),
    Column("AMOUNT", "amount"),
    Column("REMAINING", "remaining"),
    Column("REASON", "reason"),
    Column("EXPIRES", "expireTime"),
    Column("CREATED", "createTime"),
)
USAGE_COLUMNS = (
    Column("KEY", "key"),  # headed MODEL, DAY or KIND by get_usage
    Column("REQUESTS", "requests"),
    Column("PROMPT TOKENS", "promptTokens"),
    Column("CACHED", "cachedPromptTokens"),
    Column("COMPLETION TOKENS", "completionTokens"),
    Column("AMOUNT", "amount"),
)
GPU_COLUMN = Column("GPU SECONDS", "gpuSeconds")  # shown by deployment, or when any GPU time
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class GroupBy(StrEnum):
    """How ``get usage`` groups the month's records."""

    MODEL = "model"
    DAY = "day"
    KIND = "kind"
    DEPLOYMENT = "deployment"


def account_path(account: str, *rest: str) -> str:
    return "/".join([f"/v1/accounts/{segment(account)}", *rest])


def period_option(value: str) -> str:
    if not _PERIOD.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not a month; use YYYY-MM, e.g. 2026-01.")
    return value


def get_billing(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """Show an account's tier, spend limit, month-to-date usage, credits and cards."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        found = api.get(account_path(call.account(), "billing"))
    call.printer().resource(found)


def update_billing(
    ctx: typer.Context,
    *,
    account_spend_limit: Annotated[
        str | None,
        typer.Option(help="The account's own monthly limit in USD, e.g. 20.", show_default=False),
    ] = None,
    clear_account_spend_limit: Annotated[
        bool,
        typer.Option(
            "--clear-account-spend-limit",
            help="Remove the account's own limit (the tier's applies).",
        ),
    ] = False,
    custom_spend_limit: Annotated[
        str | None,
        typer.Option(help="Operator only: a custom monthly limit in USD.", show_default=False),
    ] = None,
    clear_custom_spend_limit: Annotated[
        bool,
        typer.Option("--clear-custom-spend-limit", help="Operator only: remove the custom limit."),
    ] = False,
    unlimited: Annotated[
        bool | None,
        typer.Option(
            "--unlimited/--limited",
            help="Operator only: lift (or restore) every monthly limit.",
            show_default=False,
        ),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Change spend limits: the account's own, or (operator) the custom one."""
    call = Call.of(ctx, account=account, output=output)
    body: dict[str, Any] = {}
    if account_spend_limit is not None and clear_account_spend_limit:
        raise UsageError("Pass either --account-spend-limit or --clear-account-spend-limit.")
    if custom_spend_limit is not None and clear_custom_spend_limit:
        raise UsageError("Pass either --custom-spend-limit or --clear-custom-spend-limit.")
    if account_spend_limit is not None or clear_account_spend_limit:
        body["accountSpendLimit"] = account_spend_limit
    if custom_spend_limit is not None or clear_custom_spend_limit:
        body["customSpendLimit"] = custom_spend_limit
    if unlimited is not None:
        body["unlimited"] = unlimited
    if not body:
        raise UsageError(
            "Nothing to update: pass --account-spend-limit (or --clear-account-spend-limit); "
            "the operator may also pass --custom-spend-limit or --unlimited."
        )
    with call.client() as api:
        updated = api.patch(account_path(call.account(), "billing"), body)
    call.printer().resource(updated)


def create_payment_method(
    ctx: typer.Context,
    *,
    payment_method: Annotated[
        str,
        typer.Argument(metavar="PAYMENT_METHOD", help="Provider id, e.g. pm_card_visa."),
    ],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Put a payment method on file (the test provider takes Stripe's test cards)."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        created = api.post(
            account_path(call.account(), "paymentMethods"), {"paymentMethod": payment_method}
        )
    call.printer().resource(created)


def _list(call: Call, collection: str, columns: tuple[Column, ...]) -> None:
    """Print every item of the account's ``collection`` (all pages) as a table or JSON."""
    with call.client() as api:
        listing = api.list_all(account_path(call.account(), collection), collection)
    call.printer().listing(listing.items, columns, field=collection, total_size=listing.total_size)


def list_payment_methods(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the payment methods on file."""
    _list(Call.of(ctx, account=account, output=output), "paymentMethods", PAYMENT_METHOD_COLUMNS)


def delete_payment_method(
    ctx: typer.Context,
    *,
    method_id: Annotated[str, typer.Argument(metavar="ID", help="Id from list payment-methods.")],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Remove a payment method."""
    call = Call.of(ctx, account=account, output=output)
    path = account_path(call.account(), "paymentMethods", segment(method_id))
    with call.client() as api:
        answer = api.request("DELETE", path)
    call.printer().done(f"Deleted payment method {method_id}.", answer)


def buy_credits(
    ctx: typer.Context,
    *,
    amount: Annotated[str, typer.Argument(metavar="USD", help="Amount in USD, e.g. 100.")],
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Retry-safe key: the same key never charges twice.", show_default=False),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Buy prepaid credits with the payment method on file."""
    call = Call.of(ctx, account=account, output=output)
    body: dict[str, Any] = {"amount": amount}
    if idempotency_key:
        body["idempotencyKey"] = idempotency_key
    with call.client() as api:
        bought = api.post(account_path(call.account(), "credits:purchase"), body)
    call.printer().resource(bought)


def list_credits(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List credit grants: the free credit, purchases and operator grants."""
    _list(Call.of(ctx, account=account, output=output), "credits", CREDIT_COLUMNS)


def grant_credits(
    ctx: typer.Context,
    *,
    amount: Annotated[str, typer.Option(help="Amount in USD, e.g. 25.")],
    reason: Annotated[str, typer.Option(help="Why the credit is granted.")],
    expire_time: Annotated[
        str | None,
        typer.Option(help="RFC 3339 expiry time.", callback=rfc3339, show_default=False),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Grant credits to an account (operator key only)."""
    call = Call.of(ctx, account=account, output=output)
    body: dict[str, Any] = {"amount": amount, "reason": reason}
    if expire_time:
        body["expireTime"] = expire_time
    with call.client() as api:
        granted = api.post(account_path(call.account(), "credits:grant"), body)
    call.printer().resource(granted)


def list_invoices(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List invoices, newest month first."""
    _list(Call.of(ctx, account=account, output=output), "invoices", INVOICE_COLUMNS)


InvoiceArgument = Annotated[str, typer.Argument(metavar="ID", help="Id from list invoices.")]


def get_invoice(
    ctx: typer.Context,
    *,
    invoice_id: InvoiceArgument,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show one invoice with its lines."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        found = api.get(account_path(call.account(), "invoices", segment(invoice_id)))
    call.printer().resource(found)


def pay_invoice(
    ctx: typer.Context,
    *,
    invoice_id: InvoiceArgument,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Pay an open or failed invoice now with the payment method on file."""
    call = Call.of(ctx, account=account, output=output)
    path = account_path(call.account(), "invoices", segment(invoice_id) + ":pay")
    with call.client() as api:
        paid = api.post(path, {})
    call.printer().resource(paid)


def get_usage(
    ctx: typer.Context,
    *,
    by: Annotated[GroupBy, typer.Option("--by", help="Group by.", case_sensitive=False)] = (
        GroupBy.MODEL
    ),
    start: Annotated[
        str | None,
        typer.Option(help="RFC 3339 start (default: start of this month).", callback=rfc3339),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="RFC 3339 end (default: end of this month).", callback=rfc3339),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show usage and its cost, grouped by model, day, kind or deployment."""
    call = Call.of(ctx, account=account, output=output)
    params: dict[str, str | int] = {"groupBy": by.value}
    if start:
        params["startTime"] = start
    if end:
        params["endTime"] = end
    with call.client() as api:
        usage = api.get(account_path(call.account(), "usage"), params)
    printer = call.printer()
    if printer.is_json:
        printer.json(usage)
        return
    groups = [dict(group) for group in usage.get("groups") or []]
    if by is GroupBy.MODEL:  # accounts/firebox/models/x -> x where no other row is an x
        for group, short in zip(
            groups, short_names([str(g.get("key", "")) for g in groups]), strict=True
        ):
            group["key"] = short
    if by is GroupBy.DEPLOYMENT:
        for group in groups:
            group["key"] = group.get("key") or "(serverless)"
    columns: tuple[Column, ...] = (Column(by.value.upper(), "key"), *USAGE_COLUMNS[1:])
    if by is GroupBy.DEPLOYMENT or any(group.get("gpuSeconds") for group in groups):
        columns = (*columns[:-1], GPU_COLUMN, columns[-1])
    printer.listing(groups, columns, field="groups")
    total = usage.get("total") or {}
    printer.note(f"total: {total.get('amount', '0.00')} USD")


def close_period(
    ctx: typer.Context,
    *,
    period: Annotated[str, typer.Option(help="Month to close, YYYY-MM.", callback=period_option)],
    output: OutputOption = None,
) -> None:
    """Close a month: invoice every account's usage and charge it (operator key only)."""
    call = Call.of(ctx, output=output)
    with call.client() as api:
        report = api.post("/v1/admin/billing:closePeriod", {"period": period})
    call.printer().resource(report)


def advance_clock(
    ctx: typer.Context,
    *,
    to: Annotated[str, typer.Option(help="RFC 3339 time to jump to.", callback=rfc3339)],
    output: OutputOption = None,
) -> None:
    """Move the server's test clock forward and run due month closes (operator key only)."""
    call = Call.of(ctx, output=output)
    with call.client() as api:
        answer = api.post("/v1/admin/testClock:advance", {"to": to})
    call.printer().resource(answer)


def show_clock(ctx: typer.Context, output: OutputOption = None) -> None:
    """Show the server's clock and whether the test clock is on (operator key only)."""
    call = Call.of(ctx, output=output)
    with call.client() as api:
        answer = api.get("/v1/admin/testClock")
    call.printer().resource(answer)


def register(verbs: Verbs) -> None:
    verbs.get.command("billing")(get_billing)
    verbs.update.command("billing")(update_billing)
    verbs.create.command("payment-method")(create_payment_method)
    verbs.list.command("payment-methods")(list_payment_methods)
    verbs.delete.command("payment-method")(delete_payment_method)
    verbs.list.command("credits")(list_credits)
    verbs.list.command("invoices")(list_invoices)
    verbs.get.command("invoice")(get_invoice)
    verbs.get.command("usage")(get_usage)


def register_root(root: typer.Typer) -> None:
    """The verbs only billing has (``buy``, ``pay``) and the operator's ``billing`` group."""
    buy = typer.Typer(help="Buy something (credits).", no_args_is_help=True)
    buy.command("credits")(buy_credits)
    root.add_typer(buy, name="buy")
    pay = typer.Typer(help="Pay something (an invoice).", no_args_is_help=True)
    pay.command("invoice")(pay_invoice)
    root.add_typer(pay, name="pay")
    group = typer.Typer(help="Operator billing tasks.", no_args_is_help=True)
    group.command("close-period")(close_period)
    group.command("advance-clock")(advance_clock)
    group.command("clock")(show_clock)
    group.command("grant-credits")(grant_credits)
    root.add_typer(group, name="billing")
