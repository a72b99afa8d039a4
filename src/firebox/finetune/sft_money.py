"""What a fine-tuning job costs, and the money rules around it (SPEC §2, §3, §4).

Training tokens are the tokens of the training examples times the epochs;
they are priced by the base model's price class in the price book's
``fine_tuning`` table (``billing/pricing.py``). Before a job runs, its
remaining cost is reserved against the spend guard, exactly as a request's
worst case is; at every checkpoint the tokens trained since the last charge
go into the ledger as a ``fine_tuning`` usage record (idempotent: the
record's id is the job's uid and the trained-token count it reaches), the
hold is settled to that charge, and the rest is held again. A refusal uses
the codes inference uses (402 ``monthly_spend_limit_exceeded``,
``credit_depleted``, ``failed_payments``, ``request_exceeds_spend_limit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from firebox.billing.pricing import Pricer
from firebox.errors import PaymentRequired
from firebox.inference.metering import UsageRecord, UsageSink
from firebox.limits.admission import suspended
from firebox.limits.hooks import Reason
from firebox.limits.spend_guard import Refusal, Reservation, SpendGuard
from firebox.limits.suspension import SuspensionService
from firebox.money_state import format_usd

_CODES = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "monthly_spend_limit_exceeded",
    Reason.CREDIT_DEPLETED: "credit_depleted",
}
_WHAT = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "monthly spend limit",
    Reason.CREDIT_DEPLETED: "credit",
}


class NoRoomYet(Exception):
    """Other requests' reservations hold the room this job needs; try again later."""


@dataclass(frozen=True)
class Charge:
    """Tokens trained since the last charge, and what they cost."""

    record: UsageRecord
    micros: int


def refused(account_id: str, refusal: Refusal, cost_micros: int) -> PaymentRequired:
    """The 402 for a job whose remaining cost does not fit under the account's cap."""
    reason = Reason(refusal.reason)
    what = _WHAT.get(reason, "spend limit")
    cost, cap = f"${format_usd(cost_micros)}", f"${format_usd(refusal.limit_micros)}"
    if refusal.oversized:
        return PaymentRequired(
            f"This fine-tuning job costs {cost} (dataset tokens x epochs at the base model's "
            f"fine-tuning price), more than account {account_id!r}'s whole {what} of {cap} "
            "this month. Use fewer epochs or a smaller dataset, or raise the limit "
            "(accountSpendLimit) or buy credits.",
            code="request_exceeds_spend_limit",
        )
    return PaymentRequired(
        f"What is left of account {account_id!r}'s {what} of {cap} this month cannot pay for "
        f"this fine-tuning job ({cost}). Raise the spend limit (accountSpendLimit), buy "
        "credits or add a payment method, or wait for the month to roll over (UTC).",
        code=_CODES.get(reason, "monthly_spend_limit_exceeded"),
    )


class TrainingMoney:
    """Prices, holds and charges fine-tuning; ``guard`` None means no enforcement."""

    def __init__(
        self,
        pricer: Pricer,
        sink: UsageSink,
        guard: SpendGuard | None,
        suspension: SuspensionService | None,
    ) -> None:
        self._pricer = pricer
        self._sink = sink
        self._guard = guard
        self._suspension = suspension

    def record(
        self,
        *,
        request_id: str,
        account_id: str,
        model: str,
        base_model: str,
        price_class: str | None,
        tokens: int,
        at: datetime,
    ) -> Charge:
        """The usage record of ``tokens`` training tokens, priced (``model_not_priced`` if not)."""
        record = UsageRecord(
            request_id=request_id,
            account_id=account_id,
            model=model,
            base_model=base_model,
            kind="fine_tuning",
            time=at,
            prompt_tokens=0,
            completion_tokens=0,
            price_class=price_class,
            training_tokens=tokens,
        )
        return Charge(record, self._pricer.cost(record))

    def charge(self, charge: Charge) -> None:
        """Into the ledger (through the spool: durable once this returns)."""
        self._sink.record(charge.record)

    async def reasons(self, account_id: str) -> tuple[str, ...]:
        if self._suspension is None:
            return ()
        cached = self._suspension.reasons_cached(account_id)
        return cached if cached is not None else await self._suspension.reasons_async(account_id)

    async def refuse_if_suspended(self, account_id: str) -> None:
        reasons = await self.reasons(account_id)
        if reasons:
            raise suspended(account_id, reasons[0])

    async def hold(self, account_id: str, micros: int) -> Reservation | None:
        """Reserve ``micros``; ``PaymentRequired`` when it cannot fit, ``NoRoomYet`` for now."""
        if self._guard is None or micros <= 0:
            return None
        held = await self._guard.reserve(account_id, micros, micros)
        if isinstance(held, Reservation):
            return held
        if held.hard or held.oversized:
            raise refused(account_id, held, micros)
        raise NoRoomYet()

    async def check(self, account_id: str, micros: int) -> None:
        """Whether a job of ``micros`` could start now (reserve, then release at once)."""
        await self.refuse_if_suspended(account_id)
        try:
            held = await self.hold(account_id, micros)
        except NoRoomYet:
            return  # requests in flight hold the room; the job waits for it
        await self.release(held)

    async def settle(self, held: Reservation | None, micros: int) -> None:
        if self._guard is not None and held is not None:
            await self._guard.settle(held, micros)

    async def release(self, held: Reservation | None) -> None:
        if self._guard is not None and held is not None:
            await self._guard.release(held)
