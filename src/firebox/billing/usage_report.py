"""Usage reports: the ledger's usage records summed per model, UTC day or kind.

The report reads ``usage_records`` (what the ledger wrote, already priced),
so its amounts are exactly those invoices add up. The range is half-open,
[start, end), in UTC; days are UTC calendar days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast, get_args

from sqlalchemy.orm import Session

from firebox.billing import repository as repo
from firebox.billing.repository import GroupBy
from firebox.errors import InvalidArgument

MAX_RANGE = timedelta(days=400)


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Usage of one model, day ("YYYY-MM-DD") or kind in the range."""

    key: str
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    amount_micros: int  # what the usage cost, credits included
    credit_applied_micros: int  # how much of it credits paid
    gpu_milliseconds: int = 0  # on-demand deployments: GPU time (GPUs x time)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageReport:
    account_id: str
    start: datetime
    end: datetime
    group_by: GroupBy
    groups: list[UsageGroup]
    total: UsageGroup  # key "total"


def validate_range(start: datetime, end: datetime, group_by: str) -> GroupBy:
    """Check a report's range and grouping; returns the grouping, typed."""
    if group_by not in get_args(GroupBy):
        raise InvalidArgument(
            f"Invalid groupBy {group_by!r}: use model, day, kind or deployment.",
            code="invalid_group_by",
            param="groupBy",
        )
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidArgument(
            "startTime and endTime need a time zone (RFC 3339, such as 2026-01-01T00:00:00Z).",
            code="invalid_time_range",
            param="startTime",
        )
    if end <= start or end - start > MAX_RANGE:
        raise InvalidArgument(
            "endTime must be after startTime, and the range at most 400 days.",
            code="invalid_time_range",
            param="endTime",
        )
    return cast(GroupBy, group_by)


def usage_report(
    session: Session, account_id: str, start: datetime, end: datetime, group_by: GroupBy
) -> UsageReport:
    groups = [
        UsageGroup(key, requests, prompt, cached, completion, amount, credit, gpu)
        for key, requests, prompt, cached, completion, amount, credit, gpu in repo.usage_groups(
            session, account_id, start, end, group_by
        )
    ]
    total = UsageGroup(
        key="total",
        requests=sum(g.requests for g in groups),
        prompt_tokens=sum(g.prompt_tokens for g in groups),
        cached_prompt_tokens=sum(g.cached_prompt_tokens for g in groups),
        completion_tokens=sum(g.completion_tokens for g in groups),
        amount_micros=sum(g.amount_micros for g in groups),
        credit_applied_micros=sum(g.credit_applied_micros for g in groups),
        gpu_milliseconds=sum(g.gpu_milliseconds for g in groups),
    )
    return UsageReport(account_id, start, end, group_by, groups, total)
