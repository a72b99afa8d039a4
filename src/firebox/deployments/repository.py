"""Queries of deployments. Every function takes the caller's session (its transaction).

Read helpers for the runtime: ``live`` (every deployment that should exist
now, the controller's desired set), ``live_of_account`` (what a suspension
scales to zero) and ``get_by_pk``; the service's own reads and writes are
below them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from firebox.deployments.models import DeploymentEventRow, DeploymentRow
from firebox.store.locking import lock_rows

# -- the runtime's reads ------------------------------------------------------


def live(session: Session) -> Sequence[DeploymentRow]:
    """Every deployment not deleted, in any account (oldest first): what should run."""
    query = (
        select(DeploymentRow).where(DeploymentRow.delete_time.is_(None)).order_by(DeploymentRow.pk)
    )
    return session.scalars(query).all()


def deleting(session: Session) -> Sequence[DeploymentRow]:
    """Deleted deployments not yet marked DELETED: their replicas may still be stopping."""
    query = (
        select(DeploymentRow)
        .where(DeploymentRow.delete_time.is_not(None), DeploymentRow.state != "DELETED")
        .order_by(DeploymentRow.pk)
    )
    return session.scalars(query).all()


def expired(session: Session, now: datetime) -> Sequence[DeploymentRow]:
    """Deleted deployments past their purge time whose replicas are gone (state DELETED)."""
    query = select(DeploymentRow).where(
        DeploymentRow.purge_time.is_not(None),
        DeploymentRow.purge_time <= now,
        DeploymentRow.state == "DELETED",
    )
    return session.scalars(query).all()


def live_of_account(session: Session, account_id: str) -> Sequence[DeploymentRow]:
    """The account's deployments not deleted, oldest first."""
    query = (
        select(DeploymentRow)
        .where(DeploymentRow.account_id == account_id, DeploymentRow.delete_time.is_(None))
        .order_by(DeploymentRow.pk)
    )
    return session.scalars(query).all()


def live_of_account_for_update(session: Session, account_id: str) -> Sequence[DeploymentRow]:
    """``live_of_account``, the rows locked until the transaction ends."""
    lock_rows(
        session,
        DeploymentRow,
        DeploymentRow.account_id == account_id,
        DeploymentRow.delete_time.is_(None),
    )
    query = (
        select(DeploymentRow)
        .where(DeploymentRow.account_id == account_id, DeploymentRow.delete_time.is_(None))
        .order_by(DeploymentRow.pk)
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).all()


def get_by_pk(session: Session, pk: int) -> DeploymentRow | None:
    return session.get(DeploymentRow, pk)


def get_by_pk_for_update(session: Session, pk: int) -> DeploymentRow | None:
    lock_rows(session, DeploymentRow, DeploymentRow.pk == pk)
    return session.get(DeploymentRow, pk, populate_existing=True)


def get(session: Session, account_id: str, deployment_id: str) -> DeploymentRow | None:
    """The deployment, deleted or not; ``None`` if there is none (or it was purged)."""
    return session.scalar(
        select(DeploymentRow).where(
            DeploymentRow.account_id == account_id,
            DeploymentRow.deployment_id == deployment_id,
        )
    )


def get_for_update(session: Session, account_id: str, deployment_id: str) -> DeploymentRow | None:
    """The deployment locked until the transaction ends; ``None`` if (now) gone."""
    lock_rows(
        session,
        DeploymentRow,
        DeploymentRow.account_id == account_id,
        DeploymentRow.deployment_id == deployment_id,
    )
    return session.scalar(
        select(DeploymentRow)
        .where(
            DeploymentRow.account_id == account_id,
            DeploymentRow.deployment_id == deployment_id,
        )
        .execution_options(populate_existing=True)
    )


def all_of_account(session: Session, account_id: str) -> Sequence[DeploymentRow]:
    """Every deployment of the account, deleted ones too (oldest first)."""
    query = (
        select(DeploymentRow)
        .where(DeploymentRow.account_id == account_id)
        .order_by(DeploymentRow.pk)
    )
    return session.scalars(query).all()


def events(session: Session, deployment_pk: int, limit: int = 100) -> Sequence[DeploymentEventRow]:
    """The deployment's recorded changes, newest first."""
    query = (
        select(DeploymentEventRow)
        .where(DeploymentEventRow.deployment_pk == deployment_pk)
        .order_by(DeploymentEventRow.pk.desc())
        .limit(limit)
    )
    return session.scalars(query).all()


# -- writes ---------------------------------------------------------------------


def add_event(
    session: Session, deployment_pk: int, time: datetime, kind: str, detail: str = ""
) -> None:
    """Record a change of the deployment (``kind``: STATE, SCALE, UPDATE, SUSPEND, ...)."""
    session.add(
        DeploymentEventRow(deployment_pk=deployment_pk, time=time, kind=kind, detail=detail[:1000])
    )


def count_live(session: Session, account_id: str) -> int:
    query = (
        select(func.count())
        .select_from(DeploymentRow)
        .where(DeploymentRow.account_id == account_id, DeploymentRow.delete_time.is_(None))
    )
    return session.scalar(query) or 0


def purge(session: Session, pk: int) -> bool:
    """Remove the row for good (after its ``purge_time``); True for the one that removed it."""
    result = session.execute(delete(DeploymentRow).where(DeploymentRow.pk == pk))
    return bool(getattr(result, "rowcount", 0) == 1)
