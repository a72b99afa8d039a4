"""How billing tells the rest of the platform that an account's money changed.

Billing calls ``MoneyListener.money_changed`` after every commit that moves
an account's limit, credit, payment methods, failed invoices or period (the
limits slice re-evaluates suspension then). The protocol is structural so
billing never imports limits; ``services.py`` passes the listener in.
"""

from __future__ import annotations

from typing import Protocol


class MoneyListener(Protocol):
    def money_changed(self, account_id: str) -> None: ...


class NoListener:
    """Listens to nothing (billing used on its own, in tests)."""

    def money_changed(self, account_id: str) -> None:
        return None
