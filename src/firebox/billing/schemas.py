"""Wire models of billing: camelCase JSON, USD as decimal strings.

Money crosses the wire only as ``format_usd`` strings ("100.00",
"0.000123") and is read back only through ``parse_usd``; a JSON number for
an amount is refused, so no float ever touches money. ``spendLimit`` is
``null`` when the account has no limit (operator "unlimited"). ``tier`` is a
string: "1".."4", or "custom" while an operator-set limit (or unlimited) is
in force.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from firebox.billing.credits import CreditGrant as CreditGrantData
from firebox.billing.invoices import Invoice as InvoiceData
from firebox.billing.invoices import InvoiceLine as InvoiceLineData
from firebox.billing.invoices import InvoicePage
from firebox.billing.money import format_usd
from firebox.billing.overview import BillingOverview as BillingOverviewData
from firebox.billing.payment_methods import PaymentMethod as PaymentMethodData
from firebox.billing.period import CloseReport as CloseReportData
from firebox.billing.purchases import CreditPurchase as CreditPurchaseData
from firebox.billing.usage_report import UsageGroup as UsageGroupData
from firebox.billing.usage_report import UsageReport as UsageReportData
from firebox.wire import RequestModel, Timestamp, WireModel


def usd(micros: int | None) -> str | None:
    """``format_usd`` that passes ``None`` (no limit) through."""
    return None if micros is None else format_usd(micros)


# -- overview and limits ---------------------------------------------------------------


class BillingUpdate(RequestModel):
    """Spend limits; a field left out is unchanged, ``null`` clears it.

    ``customSpendLimit`` and ``unlimited`` are the operator's; anyone else
    sending them gets a 403.
    """

    account_spend_limit: str | None = None
    custom_spend_limit: str | None = None
    unlimited: bool | None = None


class Billing(WireModel):
    """An account's money position; see the module docstring for ``tier``/``spendLimit``."""

    name: str
    tier: str
    usage_tier: str
    spend_limit: str | None
    tier_spend_limit: str
    custom_spend_limit: str | None
    unlimited: bool
    account_spend_limit: str | None
    month_to_date_usage: str
    credit_balance: str
    historical_spend: str
    failed_invoices: int
    payment_methods: list[PaymentMethod]
    suspend_state: str
    period: str
    period_start: datetime
    period_end: datetime

    @classmethod
    def of(cls, view: BillingOverviewData) -> Billing:
        return cls(
            name=f"accounts/{view.account_id}/billing",
            tier=str(view.tier),
            usage_tier=str(view.usage_tier),
            spend_limit=usd(view.spend_limit_micros),
            tier_spend_limit=format_usd(view.tier_spend_limit_micros),
            custom_spend_limit=usd(view.custom_spend_limit_micros),
            unlimited=view.unlimited,
            account_spend_limit=usd(view.account_spend_limit_micros),
            month_to_date_usage=format_usd(view.month_to_date_usage_micros),
            credit_balance=format_usd(view.credit_balance_micros),
            historical_spend=format_usd(view.historical_spend_micros),
            failed_invoices=view.failed_invoices,
            payment_methods=[PaymentMethod.of(m) for m in view.payment_methods],
            suspend_state=view.suspend_state,
            period=view.period,
            period_start=view.period_start,
            period_end=view.period_end,
        )


# -- usage ------------------------------------------------------------------------------


class UsageGroup(WireModel):
    key: str
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    amount: str
    credit_applied: str
    gpu_seconds: float = 0.0  # on-demand deployments: GPUs x seconds

    @classmethod
    def of(cls, group: UsageGroupData) -> UsageGroup:
        return cls(
            key=group.key,
            requests=group.requests,
            prompt_tokens=group.prompt_tokens,
            cached_prompt_tokens=group.cached_prompt_tokens,
            completion_tokens=group.completion_tokens,
            total_tokens=group.total_tokens,
            amount=format_usd(group.amount_micros),
            credit_applied=format_usd(group.credit_applied_micros),
            gpu_seconds=group.gpu_milliseconds / 1000,
        )


class Usage(WireModel):
    """Usage in [startTime, endTime) grouped by model, UTC day, kind or deployment."""

    start_time: datetime
    end_time: datetime
    group_by: str
    groups: list[UsageGroup]
    total: UsageGroup

    @classmethod
    def of(cls, report: UsageReportData) -> Usage:
        return cls(
            start_time=report.start,
            end_time=report.end,
            group_by=report.group_by,
            groups=[UsageGroup.of(g) for g in report.groups],
            total=UsageGroup.of(report.total),
        )


# -- payment methods ------------------------------------------------------------------


class PaymentMethodCreate(RequestModel):
    payment_method: str = Field(
        min_length=1, max_length=255, description="The provider's token, e.g. pm_card_visa."
    )


class PaymentMethod(WireModel):
    """A card on file; only its brand and last four digits are shown."""

    name: str
    id: str
    provider: str
    brand: str
    last4: str
    create_time: datetime

    @classmethod
    def of(cls, method: PaymentMethodData) -> PaymentMethod:
        return cls(
            name=f"accounts/{method.account_id}/paymentMethods/{method.id}",
            id=method.id,
            provider=method.provider,
            brand=method.brand,
            last4=method.last4,
            create_time=method.create_time,
        )


class PaymentMethodList(WireModel):
    payment_methods: list[PaymentMethod]
    next_page_token: str = ""
    total_size: int


# -- credits ----------------------------------------------------------------------------


class CreditPurchaseRequest(RequestModel):
    amount: str = Field(description='USD as a decimal string, e.g. "100.00".')
    idempotency_key: str | None = Field(default=None, max_length=80)


class CreditGrantRequest(RequestModel):
    amount: str = Field(description='USD as a decimal string, e.g. "25.00".')
    reason: str = Field(min_length=1, max_length=256)
    expire_time: Timestamp | None = None


class CreditGrant(WireModel):
    name: str
    id: str
    source: str
    amount: str
    remaining: str
    reason: str
    expire_time: datetime | None
    create_time: datetime

    @classmethod
    def of(cls, grant: CreditGrantData) -> CreditGrant:
        return cls(
            name=f"accounts/{grant.account_id}/credits/{grant.id}",
            id=grant.id,
            source=grant.source,
            amount=format_usd(grant.amount_micros),
            remaining=format_usd(grant.remaining_micros),
            reason=grant.reason,
            expire_time=grant.expire_time,
            create_time=grant.create_time,
        )


class CreditGrantList(WireModel):
    credits: list[CreditGrant]
    next_page_token: str = ""
    total_size: int


class CreditPurchase(WireModel):
    """A succeeded purchase; replaying its idempotency key answers the same."""

    name: str
    id: str
    amount: str
    state: str
    payment_method_id: str | None
    grant_id: str
    idempotency_key: str
    create_time: datetime

    @classmethod
    def of(cls, purchase: CreditPurchaseData) -> CreditPurchase:
        return cls(
            name=f"accounts/{purchase.account_id}/payments/{purchase.id}",
            id=purchase.id,
            amount=format_usd(purchase.amount_micros),
            state=purchase.state,
            payment_method_id=purchase.payment_method_id,
            grant_id=purchase.grant_id,
            idempotency_key=purchase.idempotency_key,
            create_time=purchase.create_time,
        )


# -- invoices -------------------------------------------------------------------------


class InvoiceLine(WireModel):
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
    amount: str
    credit_applied: str

    @classmethod
    def of(cls, line: InvoiceLineData) -> InvoiceLine:
        return cls(
            model=line.model,
            kind=line.kind,
            requests=line.requests,
            prompt_tokens=line.prompt_tokens,
            cached_prompt_tokens=line.cached_prompt_tokens,
            completion_tokens=line.completion_tokens,
            images=line.images,
            steps=line.steps,
            gpu_milliseconds=line.gpu_milliseconds,
            training_tokens=line.training_tokens,
            amount=format_usd(line.amount_micros),
            credit_applied=format_usd(line.credit_applied_micros),
        )


class Invoice(WireModel):
    """One month's invoice; ``amountDue`` is ``total`` rounded up to whole cents."""

    name: str
    id: str
    period: str
    state: str
    usage: str
    credits_applied: str
    total: str
    amount_due: str
    attempt_count: int
    last_failure: str
    next_attempt_time: datetime | None
    create_time: datetime
    update_time: datetime
    paid_time: datetime | None
    lines: list[InvoiceLine]

    @classmethod
    def of(cls, invoice: InvoiceData) -> Invoice:
        return cls(
            name=f"accounts/{invoice.account_id}/invoices/{invoice.id}",
            id=invoice.id,
            period=invoice.period,
            state=invoice.state,
            usage=format_usd(invoice.usage_micros),
            credits_applied=format_usd(invoice.credits_applied_micros),
            total=format_usd(invoice.total_micros),
            amount_due=format_usd(invoice.amount_due_micros),
            attempt_count=invoice.attempt_count,
            last_failure=invoice.last_failure,
            next_attempt_time=invoice.next_attempt_time,
            create_time=invoice.create_time,
            update_time=invoice.update_time,
            paid_time=invoice.paid_time,
            lines=[InvoiceLine.of(line) for line in invoice.lines],
        )


class InvoiceList(WireModel):
    invoices: list[Invoice]
    next_page_token: str = ""
    total_size: int

    @classmethod
    def of(cls, page: InvoicePage) -> InvoiceList:
        return cls(
            invoices=[Invoice.of(i) for i in page.invoices],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )


# -- admin: period close and test clock ----------------------------------------------


class ClosePeriodRequest(RequestModel):
    period: str = Field(description='The month to close, "YYYY-MM" (UTC); it must have ended.')


class CloseReport(WireModel):
    period: str
    invoice_ids: list[str]
    paid: int
    payment_failed: int
    open: int
    already_invoiced: int
    late_records: int

    @classmethod
    def of(cls, report: CloseReportData) -> CloseReport:
        return cls(
            period=report.period,
            invoice_ids=list(report.invoice_ids),
            paid=report.paid,
            payment_failed=report.payment_failed,
            open=report.open,
            already_invoiced=report.already_invoiced,
            late_records=report.late_records,
        )


class AdvanceClockRequest(RequestModel):
    to: Timestamp = Field(description="RFC 3339 time to move the test clock to; never backwards.")


class AdvanceClockResult(WireModel):
    now: datetime
    closed_periods: list[str]
    payment_attempts: int
    errors: list[str]


class TestClockState(WireModel):
    __test__ = False  # not a pytest test class, despite its name

    now: datetime
    offset_seconds: int
    enabled: bool
