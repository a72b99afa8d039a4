"""Wire models of quotas and per-account limits."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from firebox.accounts.roles import Plan
from firebox.limits.plans import AccountLimits
from firebox.wire import RequestModel, WireModel

MAX_LIMIT = 10_000_000_000


class Quota(WireModel):
    """One quota: ``value`` is the cap (``null``: unlimited), ``usage`` what is taken."""

    name: str  # accounts/{account}/quotas/{quota_id}
    display_name: str
    value: int | None
    usage: int
    can_raise: bool
    update_time: datetime | None = None


class QuotaList(WireModel):
    quotas: list[Quota]
    next_page_token: str = ""
    total_size: int


class QuotaUpdate(RequestModel):
    """``PATCH …/quotas/{id}`` (operator only); ``null`` returns it to the plan's default."""

    value: int | None = Field(ge=0, le=MAX_LIMIT)


class LimitsUpdate(RequestModel):
    """``PATCH …/limits`` (operator only); a field left out is not changed, ``null`` resets it."""

    rate_limit_requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    prompt_tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    generated_tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class Limits(WireModel):
    """An account's effective per-minute limits (``null``: unlimited / not limited)."""

    name: str  # accounts/{account}/limits
    plan: Plan
    rate_limit_requests_per_minute: int | None
    rate_limit_is_plan_default: bool
    prompt_tokens_per_minute: int | None
    generated_tokens_per_minute: int | None

    @classmethod
    def of(cls, limits: AccountLimits) -> Limits:
        return cls(
            name=f"accounts/{limits.account_id}/limits",
            plan=limits.plan,
            rate_limit_requests_per_minute=limits.requests_per_minute,
            rate_limit_is_plan_default=not limits.requests_override,
            prompt_tokens_per_minute=limits.prompt_tokens_per_minute,
            generated_tokens_per_minute=limits.generated_tokens_per_minute,
        )
