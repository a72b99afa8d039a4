"""Queries of the catalog slice. Every function takes the caller's session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firebox.catalog.models import ModelRow
from firebox.store.locking import lock_rows


def get_model(session: Session, account_id: str, model_id: str) -> ModelRow | None:
    return session.scalar(
        select(ModelRow).where(ModelRow.account_id == account_id, ModelRow.model_id == model_id)
    )


def get_model_for_update(session: Session, account_id: str, model_id: str) -> ModelRow | None:
    """The model, locked until the transaction ends; ``None`` if there is (now) none.

    Changes and deletes of one model queue here; the one that comes second
    reads what the first committed, so a model deleted meanwhile is a 404.
    """
    where = (ModelRow.account_id == account_id, ModelRow.model_id == model_id)
    lock_rows(session, ModelRow, *where)
    return session.scalar(select(ModelRow).where(*where).execution_options(populate_existing=True))


def get_model_by_pk(session: Session, pk: int) -> ModelRow | None:
    return session.get(ModelRow, pk)


def list_models(
    session: Session, account_id: str, *, public_only: bool, after: str | None, limit: int
) -> Sequence[ModelRow]:
    query = (
        select(ModelRow)
        .where(ModelRow.account_id == account_id)
        .order_by(ModelRow.model_id)
        .limit(limit)
    )
    if public_only:
        query = query.where(ModelRow.public.is_(True))
    if after is not None:
        query = query.where(ModelRow.model_id > after)
    return session.scalars(query).all()


def count_models(session: Session, account_id: str, *, public_only: bool) -> int:
    query = select(func.count()).select_from(ModelRow).where(ModelRow.account_id == account_id)
    if public_only:
        query = query.where(ModelRow.public.is_(True))
    return session.scalar(query) or 0


def bases_of(session: Session, rows: Sequence[ModelRow]) -> dict[int, ModelRow]:
    """The base models of the add-ons among ``rows``, by primary key."""
    pks = {row.base_model_pk for row in rows if row.base_model_pk is not None}
    if not pks:
        return {}
    return {row.pk: row for row in session.scalars(select(ModelRow).where(ModelRow.pk.in_(pks)))}


def addons_of(session: Session, base_pk: int) -> list[str]:
    """Full names of the add-ons built on the model ``base_pk``, in any account."""
    query = (
        select(ModelRow.account_id, ModelRow.model_id)
        .where(ModelRow.base_model_pk == base_pk)
        .order_by(ModelRow.account_id, ModelRow.model_id)
    )
    return [f"accounts/{a}/models/{m}" for a, m in session.execute(query).all()]


def all_models(session: Session) -> Sequence[ModelRow]:
    """Every model of every account: the input of the in-memory index."""
    return session.scalars(select(ModelRow)).all()
