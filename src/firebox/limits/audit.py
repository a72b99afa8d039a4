"""The audit log: every change of an account's enforcement state, newest first.

Rows are written by the slice that makes the change, in the same
transaction (suspension here, quotas and limits in their services); this
module only reads them. Reading needs ``BILLING_READ`` in the account (its
admins and users; the operator everywhere): the log says when and why the
account was suspended and what its limits became, which is billing
information, and contributors or inference-only users do not see it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.errors import NotFound
from firebox.limits import suspension_repository as repo
from firebox.limits.models import AuditLogRow
from firebox.paging import decode_row_id_token, next_token, page_size
from firebox.store.database import Database
from firebox.wire import WireModel


class AuditEntry(WireModel):
    """One change: who (``actor``: "system" or a user's name) did what, when."""

    name: str  # accounts/{account}/auditLog/{id}
    time: datetime
    actor: str
    action: str  # SUSPENDED, UNSUSPENDED, REASON_ADDED, REASON_LIFTED, QUOTA_UPDATED, ...
    detail: dict[str, Any]

    @classmethod
    def of(cls, row: AuditLogRow) -> AuditEntry:
        return cls(
            name=f"accounts/{row.account_id}/auditLog/{row.id}",
            time=row.time,
            actor=row.actor,
            action=row.action,
            detail=parse_detail(row.detail),
        )


class AuditLogList(WireModel):
    audit_log_entries: list[AuditEntry]
    next_page_token: str = ""
    total_size: int


def parse_detail(raw: str) -> dict[str, Any]:
    """A row's detail as an object: its JSON object, or ``{"message": text}``."""
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {"message": raw}


class AuditLogService:
    """Lists an account's audit log, newest first, a page at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> AuditLogList:
        principal.require(account_id, Permission.BILLING_READ)
        limit = page_size(size)
        before = decode_row_id_token(token)
        with self._db.transaction() as session:
            if not repo.account_exists(session, account_id):
                raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")
            rows = list(repo.list_audit(session, account_id, before=before, limit=limit))
            return AuditLogList(
                audit_log_entries=[AuditEntry.of(row) for row in rows],
                next_page_token=next_token([str(row.id) for row in rows], limit),
                total_size=repo.count_audit(session, account_id),
            )
