"""Queries of deployment shapes and their versions. Every function takes the caller's session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from firebox.deployments.models import DeploymentShapeRow, DeploymentShapeVersionRow
from firebox.store.locking import lock_rows


def get_shape(session: Session, account_id: str, shape_id: str) -> DeploymentShapeRow | None:
    return session.scalar(
        select(DeploymentShapeRow).where(
            DeploymentShapeRow.account_id == account_id, DeploymentShapeRow.shape_id == shape_id
        )
    )


def get_shape_for_update(
    session: Session, account_id: str, shape_id: str
) -> DeploymentShapeRow | None:
    lock_rows(
        session,
        DeploymentShapeRow,
        DeploymentShapeRow.account_id == account_id,
        DeploymentShapeRow.shape_id == shape_id,
    )
    return session.scalar(
        select(DeploymentShapeRow)
        .where(DeploymentShapeRow.account_id == account_id, DeploymentShapeRow.shape_id == shape_id)
        .execution_options(populate_existing=True)
    )


def list_shapes(
    session: Session, account_id: str, *, public_only: bool
) -> Sequence[DeploymentShapeRow]:
    query = (
        select(DeploymentShapeRow)
        .where(DeploymentShapeRow.account_id == account_id)
        .order_by(DeploymentShapeRow.shape_id)
    )
    if public_only:
        query = query.where(DeploymentShapeRow.public.is_(True))
    return session.scalars(query).all()


def get_version(session: Session, shape_pk: int, version: int) -> DeploymentShapeVersionRow | None:
    return session.scalar(
        select(DeploymentShapeVersionRow).where(
            DeploymentShapeVersionRow.shape_pk == shape_pk,
            DeploymentShapeVersionRow.version == version,
        )
    )


def versions(session: Session, shape_pk: int) -> Sequence[DeploymentShapeVersionRow]:
    query = (
        select(DeploymentShapeVersionRow)
        .where(DeploymentShapeVersionRow.shape_pk == shape_pk)
        .order_by(DeploymentShapeVersionRow.version)
    )
    return session.scalars(query).all()


def remove_shape(session: Session, pk: int) -> bool:
    """Delete the shape and its versions; True for the one transaction that removed it."""
    session.execute(
        delete(DeploymentShapeVersionRow).where(DeploymentShapeVersionRow.shape_pk == pk)
    )
    result = session.execute(delete(DeploymentShapeRow).where(DeploymentShapeRow.pk == pk))
    return bool(getattr(result, "rowcount", 0) == 1)
