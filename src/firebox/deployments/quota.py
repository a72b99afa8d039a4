"""The quota units a deployment holds, claimed and given back through the limits slice.

A live deployment holds ``acceleratorCount x max(maxReplicaCount, :scale
count)`` of its accelerator type's quota, and one ``deployed-models`` unit
(it deploys one model). ``hold`` moves the row from what it holds to what
its spec needs, inside the caller's transaction: a claim beyond the quota
raises ``quota_exceeded`` (naming the quota, its value and usage) and the
transaction, row and all, rolls back.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from firebox.deployments.accelerators import quota_of
from firebox.deployments.models import DeploymentRow
from firebox.deployments.spec import FullSpec

DEPLOYED_MODELS = "deployed-models"


class QuotaClaims(Protocol):
    """The limits slice's quota enforcement (``QuotaService``), called inside our transaction."""

    def claim(self, session: Session, account_id: str, quota_id: str, amount: int = 1) -> None: ...

    def release(
        self, session: Session, account_id: str, quota_id: str, amount: int = 1
    ) -> None: ...


def hold(quotas: QuotaClaims | None, session: Session, row: DeploymentRow, spec: FullSpec) -> None:
    """Make the units ``row`` holds what ``spec`` (and its ``:scale`` count) needs."""
    quota_id = quota_of(spec.accelerator_type)
    units = spec.accelerators_held(row.fixed_replicas) if quota_id else 0
    if quotas is not None:
        # Accelerators first, then deployed models: every claimer locks in this order.
        if row.quota_id == quota_id and quota_id is not None:
            if units > row.quota_units:
                quotas.claim(session, row.account_id, quota_id, units - row.quota_units)
            elif units < row.quota_units:
                quotas.release(session, row.account_id, quota_id, row.quota_units - units)
        else:
            if row.quota_id is not None and row.quota_units:
                quotas.release(session, row.account_id, row.quota_id, row.quota_units)
            if quota_id is not None and units:
                quotas.claim(session, row.account_id, quota_id, units)
        if not row.model_units:
            quotas.claim(session, row.account_id, DEPLOYED_MODELS, 1)
    row.quota_id = quota_id
    row.quota_units = units
    row.model_units = 1


def release_all(quotas: QuotaClaims | None, session: Session, row: DeploymentRow) -> None:
    """Give back every unit ``row`` holds (it is being deleted)."""
    if quotas is not None:
        if row.quota_id is not None and row.quota_units:
            quotas.release(session, row.account_id, row.quota_id, row.quota_units)
        if row.model_units:
            quotas.release(session, row.account_id, DEPLOYED_MODELS, row.model_units)
    row.quota_units = 0
    row.model_units = 0
