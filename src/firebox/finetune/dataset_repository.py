"""Queries of datasets. Every function takes the caller's session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow
from firebox.finetune.dataset_models import DatasetRow
from firebox.store.locking import lock_rows


def get(session: Session, account_id: str, dataset_id: str) -> DatasetRow | None:
    return session.scalar(
        select(DatasetRow).where(
            DatasetRow.account_id == account_id, DatasetRow.dataset_id == dataset_id
        )
    )


def get_for_update(session: Session, account_id: str, dataset_id: str) -> DatasetRow | None:
    """The dataset, locked until the transaction ends; ``None`` if (now) gone."""
    lock_rows(
        session,
        DatasetRow,
        DatasetRow.account_id == account_id,
        DatasetRow.dataset_id == dataset_id,
    )
    return session.scalar(
        select(DatasetRow)
        .where(DatasetRow.account_id == account_id, DatasetRow.dataset_id == dataset_id)
        .execution_options(populate_existing=True)
    )


def lock_account(session: Session, account_id: str) -> None:
    """Serialize the account's storage accounting (quota checks) until the transaction ends."""
    lock_rows(session, AccountRow, AccountRow.id == account_id)


def bytes_held(session: Session, account_id: str) -> int:
    """Bytes the account's datasets store or have been promised by signed upload URLs."""
    query = select(func.coalesce(func.sum(DatasetRow.total_bytes + DatasetRow.reserved_bytes), 0))
    return int(session.scalar(query.where(DatasetRow.account_id == account_id)) or 0)


def list_page(
    session: Session, account_id: str, *, after: str | None, limit: int
) -> Sequence[DatasetRow]:
    query = (
        select(DatasetRow)
        .where(DatasetRow.account_id == account_id)
        .order_by(DatasetRow.dataset_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(DatasetRow.dataset_id > after)
    return session.scalars(query).all()


def count(session: Session, account_id: str) -> int:
    query = select(func.count()).select_from(DatasetRow).where(DatasetRow.account_id == account_id)
    return session.scalar(query) or 0


def remove(session: Session, pk: int) -> bool:
    """Delete the dataset row; True only for the one transaction that removed it."""
    result = session.execute(delete(DatasetRow).where(DatasetRow.pk == pk))
    return bool(getattr(result, "rowcount", 0) == 1)
