"""Whether an account is suspended now, read in the caller's transaction (SPEC §4).

The runtime scales an account's deployments to zero when its suspension
flips (``control.suspend_account``, called by the limits slice's hook). A
deployment created or undeleted while the account is already suspended
must start suspended too: no hook will fire for it. The create takes the
account row lock first, the same lock every change of suspension reasons
takes, so a suspension and a create never miss each other.

A monthly spend-limit reason of a past month no longer suspends (the
limits slice lifts it on its next read, and its hook then restores).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from firebox.limits import suspension_repository
from firebox.money_state import period_of

MONTHLY = "MONTHLY_SPEND_LIMIT_EXCEEDED"


def account_suspended(session: Session, account_id: str, now: datetime) -> bool:
    month = period_of(now)
    for row in suspension_repository.list_reasons(session, account_id):
        if row.reason == MONTHLY and suspension_repository.past(row.period, month):
            continue
        return True
    return False
