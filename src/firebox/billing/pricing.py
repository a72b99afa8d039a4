"""Pricing: what one usage record costs, exactly as the ledger writes it (SPEC §2).

The unit price comes from, in order of precedence: the account's own
override (enterprise pricing), the model's explicit catalog price, the price
class's row of the price-book version in force at the record's time. A
record priced by none of them is refused (``model_not_priced``): serving
should have refused the model earlier, and the ledger must never write an
unpriced record silently.

Amounts follow the rule of ``billing/money.py``: computed exactly in integer
arithmetic and rounded once, half-even, to the micro-dollar.

- chat / completion: ``(prompt - cached + images*576 + completion) * unit +
  cached * unit * (100 - discount%) / 100``, per 1M tokens;
- embedding: ``prompt * unit`` per 1M tokens;
- image: ``steps * unit`` (unit per step);
- deployment: ``gpu_milliseconds * gpu_hour / 3_600_000``, less the account's
  deployment discount (the only kind a discount applies to); GPU count is
  already folded into ``gpu_milliseconds``;
- fine_tuning: ``training_tokens * unit`` per 1M, unit by the base model's class;
- batch: a chat completion of a batch job, priced as chat at the price
  version's ``batch_price_percent`` of the serving unit (SPEC §2: 50%).

A serving record of a request to an on-demand deployment (``deployment`` set)
costs nothing per token: the deployment's GPU time is billed instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from firebox.billing.money import divide_half_even
from firebox.billing.overrides import OverrideSource
from firebox.billing.price_book import PriceBook, PriceVersion
from firebox.clock import Clock, SystemClock
from firebox.errors import FailedPrecondition
from firebox.inference.admission import Demand
from firebox.inference.metering import UsageRecord
from firebox.money_state import period_of  # one of it, shared with limits

__all__ = [
    "BPS",
    "MS_PER_HOUR",
    "PER_MILLION",
    "TOKENS_PER_IMAGE",
    "PricedUsage",
    "Pricer",
    "not_priced",
    "period_of",  # re-exported from firebox.money_state
]

TOKENS_PER_IMAGE = 576
PER_MILLION = 1_000_000
MS_PER_HOUR = 3_600_000
BPS = 10_000


@dataclass(frozen=True, slots=True)
class PricedUsage:
    """A usage record with its price; what the ledger writes."""

    record: UsageRecord
    price_version: str
    unit_price_micros: int  # per 1M tokens, per step or per GPU-hour, by kind
    cached_unit_price_micros: int  # per 1M cached prompt tokens (rounded, for display)
    amount_micros: int
    period: str  # "YYYY-MM", UTC, of the record's time


def not_priced(model: str, detail: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"Model {model!r} has no price: {detail}. Give it an explicit price in the catalog "
        "or add its price class to the price book.",
        code="model_not_priced",
    )


class Pricer:
    """Prices usage records and worst-case demands from the price book and overrides."""

    def __init__(
        self, book: PriceBook, overrides: OverrideSource, *, clock: Clock | None = None
    ) -> None:
        self.book = book
        self.overrides = overrides
        self._clock: Clock = clock or SystemClock()

    def price(self, record: UsageRecord) -> PricedUsage:
        """The exact price of ``record``; raises ``FailedPrecondition`` if it has none."""
        version = self.book.version_at(record.time)
        kind = record.kind
        if kind in ("chat", "completion", "embedding", "image", "batch") and record.deployment:
            return self._priced(record, version, 0, 0, 0)
        if kind == "deployment":
            return self._deployment(record, version)
        if kind == "fine_tuning":
            return self._fine_tuning(record, version)
        unit = self._serving_unit(
            record.account_id,
            record.base_model,
            record.price_class,
            record.explicit_price_micros,
            version,
            record.time,
        )
        if kind == "image":
            return self._priced(record, version, unit, 0, record.steps * unit)
        if kind == "embedding":
            amount = divide_half_even(record.prompt_tokens * unit, PER_MILLION)
            return self._priced(record, version, unit, 0, amount)
        full_percent = 100
        cached_percent = full_percent - version.cached_prompt_discount_percent
        share = version.batch_price_percent if kind == "batch" else full_percent
        cached = min(record.cached_prompt_tokens, record.prompt_tokens)
        full_tokens = (
            record.prompt_tokens - cached + record.images * TOKENS_PER_IMAGE
        ) + record.completion_tokens
        numerator = (full_tokens * unit * full_percent + cached * unit * cached_percent) * share
        amount = divide_half_even(numerator, PER_MILLION * full_percent * full_percent)
        cached_unit = divide_half_even(unit * cached_percent * share, full_percent * full_percent)
        shown = divide_half_even(unit * share, full_percent)  # the unit this record paid
        return self._priced(record, version, shown, cached_unit, amount)

    def cost(self, record: UsageRecord) -> int:
        """``price(record).amount_micros``."""
        return self.price(record).amount_micros

    def worst_case_cost(self, demand: Demand) -> int:
        """The most ``demand`` can cost, every prompt token at the full (uncached) unit.

        Image demands carry the most denoising steps in ``completion_tokens``.
        A demand on an on-demand deployment costs nothing per token.
        """
        if demand.deployment:
            return 0
        now = self._clock.now()
        version = self.book.version_at(now)
        unit = self._serving_unit(
            demand.account_id,
            demand.billing_model,
            demand.price_class,
            demand.explicit_price_micros,
            version,
            now,
        )
        if demand.kind == "image":
            return demand.completion_tokens * unit
        tokens = demand.prompt_tokens
        if demand.kind != "embedding":
            tokens += demand.images * TOKENS_PER_IMAGE + demand.completion_tokens
        share = version.batch_price_percent if demand.kind == "batch" else 100
        # Round up: a bound must not fall short.
        return -(-(tokens * unit * share) // (PER_MILLION * 100))

    def _serving_unit(
        self,
        account_id: str,
        model: str,
        price_class: str | None,
        explicit: int | None,
        version: PriceVersion,
        at: datetime,
    ) -> int:
        override = self.overrides.unit_price(account_id, model, price_class, at)
        if override is not None:
            return override
        if explicit is not None:
            return explicit
        if price_class is None:
            raise not_priced(model, "it fits no price class and has no explicit price")
        unit = version.classes.get(price_class)
        if unit is None:
            raise not_priced(
                model, f"price class {price_class} is not in price version {version.id}"
            )
        return unit

    def _deployment(self, record: UsageRecord, version: PriceVersion) -> PricedUsage:
        gpu = record.gpu_type or ""
        unit = self.overrides.unit_price(record.account_id, None, gpu, record.time)
        if unit is None:
            unit = version.gpu_hour.get(gpu)
        if unit is None:
            raise FailedPrecondition(
                f"GPU type {gpu!r} has no price: the operator sets it per account (a price "
                "override whose target is the GPU type) or in the price book.",
                code="gpu_type_not_priced",
            )
        discount = min(max(self.overrides.deployment_discount_bps(record.account_id), 0), BPS)
        numerator = record.gpu_milliseconds * unit * (BPS - discount)
        amount = divide_half_even(numerator, MS_PER_HOUR * BPS)
        return self._priced(record, version, unit, 0, amount)

    def _fine_tuning(self, record: UsageRecord, version: PriceVersion) -> PricedUsage:
        price_class = record.price_class
        target = f"fine_tuning:{price_class}" if price_class else None
        unit = self.overrides.unit_price(record.account_id, None, target, record.time)
        if unit is None and price_class is not None:
            unit = version.fine_tuning.get(price_class)
        if unit is None:
            raise not_priced(
                record.base_model,
                f"fine-tuning has no price for base class {price_class or 'none'}",
            )
        amount = divide_half_even(record.training_tokens * unit, PER_MILLION)
        return self._priced(record, version, unit, 0, amount)

    @staticmethod
    def _priced(
        record: UsageRecord, version: PriceVersion, unit: int, cached_unit: int, amount: int
    ) -> PricedUsage:
        return PricedUsage(
            record=record,
            price_version=version.id,
            unit_price_micros=unit,
            cached_unit_price_micros=cached_unit,
            amount_micros=amount,
            period=period_of(record.time),
        )
