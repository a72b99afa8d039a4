"""Reading what the ledger holds, for tests that check metering end to end."""

from __future__ import annotations

from sqlalchemy import select

from firebox.billing.models import UsageRecordRow
from firebox.services import Services


def usage_rows(services: Services, request_id: str) -> list[UsageRecordRow]:
    """The ledger's usage rows for ``request_id``, once everything queued is written."""
    assert services.money.ingest.flush(10.0), "the ledger writer did not catch up"
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.request_id == request_id)
        ).all()
        session.expunge_all()
    return list(rows)
