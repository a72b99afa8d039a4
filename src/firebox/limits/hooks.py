"""Who is told when an account is suspended or unsuspended (SPEC §4).

Suspension stops all of an account's usage: serverless requests are refused
by admission, and the slices that run longer work subscribe here (deployments
scale to zero, fine-tuning jobs pause). A subscriber's failure is logged and
never reaches the suspension that triggered it: the reason is recorded
whatever a subscriber does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

log = logging.getLogger(__name__)


class Reason(StrEnum):
    """Why an account is suspended; the account is active when it has none.

    Declared most important first: an account with several reasons reports
    the first (the one the user must act on before the others matter).
    """

    BLOCKED_BY_ABUSE_RULE = "BLOCKED_BY_ABUSE_RULE"
    FAILED_PAYMENTS = "FAILED_PAYMENTS"
    CREDIT_DEPLETED = "CREDIT_DEPLETED"
    MONTHLY_SPEND_LIMIT_EXCEEDED = "MONTHLY_SPEND_LIMIT_EXCEEDED"


SuspensionCallback = Callable[[str, bool, tuple[str, ...]], None]
"""``callback(account_id, suspended, reasons)``; ``reasons`` is empty when unsuspended."""


class SuspensionHooks:
    """A registry of callbacks run after an account's suspended flag flips."""

    def __init__(self) -> None:
        self._callbacks: list[SuspensionCallback] = []
        self._lock = threading.Lock()

    def register(self, callback: SuspensionCallback) -> None:
        """Call ``callback`` on every later flip, in registration order."""
        with self._lock:
            self._callbacks.append(callback)

    def notify(self, account_id: str, suspended: bool, reasons: tuple[str, ...]) -> None:
        """Run every callback; one that raises is logged and the others still run."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(account_id, suspended, reasons)
            except Exception:
                log.exception(
                    "suspension hook %r failed for account %s (suspended=%s)",
                    callback,
                    account_id,
                    suspended,
                )
