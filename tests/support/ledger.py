"""Reading what the ledger holds, for tests that check metering end to end."""

from __future__ import annotations

from sqlalchemy import select

from firebox.billing.models import UsageRecordRow
from firebox.services import Services


def usage_rows(services: Services, request_id: str) -> list[UsageRecordRow]:
    """The ledger's usage rows of the request sent with ``x-request-id: request_id``.

    Metering suffixes a client's id (``<id>~<random>``) so clients cannot choose
    the ledger's idempotency key; waits until everything queued is written.
    """
    assert services.money.ingest.flush(10.0), "the ledger writer did not catch up"
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(
                (UsageRecordRow.request_id == request_id)
                | UsageRecordRow.request_id.startswith(f"{request_id}~", autoescape=True)
            )
        ).all()
        session.expunge_all()
    return list(rows)
