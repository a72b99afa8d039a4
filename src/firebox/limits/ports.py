"""What the limits slice needs from outside it, as protocols wired by ``services.py``.

``billing`` and ``limits`` never import each other (an import-linter
contract): billing implements ``MoneySource`` and calls ``MoneyListener``
structurally, and ``services.py`` connects the two.
"""

from __future__ import annotations

from typing import Protocol

from firebox.inference.admission import Demand
from firebox.inference.metering import UsageRecord
from firebox.money_state import SpendState

__all__ = ["MoneyListener", "MoneySource", "SpendState"]


class MoneySource(Protocol):
    """Billing as the limits slice sees it."""

    def spend_state(self, account_id: str) -> SpendState:
        """The account's current money position (from the database)."""
        ...

    def cost(self, usage: UsageRecord) -> int:
        """What ``usage`` costs, in micro-USD, exactly as the ledger will price it."""
        ...

    def worst_case_cost(self, demand: Demand) -> int:
        """The most ``demand`` can cost, in micro-USD."""
        ...


class MoneyListener(Protocol):
    """Told when an account's money position changed (purchase, payment, limit, period)."""

    def money_changed(self, account_id: str) -> None: ...
