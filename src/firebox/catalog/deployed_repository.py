"""Queries of deployed models. Every function takes the caller's session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from firebox.catalog.deployed_models import DeployedModelRow, DeployedState, deployed_name
from firebox.catalog.kinds import model_name
from firebox.catalog.models import ModelRow
from firebox.store.locking import lock_rows


def get(session: Session, account_id: str, deployed_model_id: str) -> DeployedModelRow | None:
    return session.scalar(
        select(DeployedModelRow).where(
            DeployedModelRow.account_id == account_id,
            DeployedModelRow.deployed_model_id == deployed_model_id,
        )
    )


def get_for_update(
    session: Session, account_id: str, deployed_model_id: str
) -> DeployedModelRow | None:
    """The deployed model, locked until the transaction ends; ``None`` if (now) gone.

    A request that changes or unloads it waits here for one doing the same,
    then reads what that one committed: a deleted row is a 404, not a
    stale write.
    """
    lock_rows(
        session,
        DeployedModelRow,
        DeployedModelRow.account_id == account_id,
        DeployedModelRow.deployed_model_id == deployed_model_id,
    )
    return session.scalar(
        select(DeployedModelRow)
        .where(
            DeployedModelRow.account_id == account_id,
            DeployedModelRow.deployed_model_id == deployed_model_id,
        )
        .execution_options(populate_existing=True)
    )


def get_by_pk(session: Session, pk: int) -> DeployedModelRow | None:
    return session.get(DeployedModelRow, pk)


def of_model(session: Session, account_id: str, model_pk: int) -> DeployedModelRow | None:
    """The deployed model of add-on ``model_pk`` in ``account_id``, if it is loaded there."""
    return session.scalar(
        select(DeployedModelRow).where(
            DeployedModelRow.account_id == account_id, DeployedModelRow.model_pk == model_pk
        )
    )


def id_taken(session: Session, account_id: str, deployed_model_id: str) -> bool:
    return get(session, account_id, deployed_model_id) is not None


def list_page(
    session: Session, account_id: str, *, after: str | None, limit: int
) -> Sequence[DeployedModelRow]:
    query = (
        select(DeployedModelRow)
        .where(DeployedModelRow.account_id == account_id)
        .order_by(DeployedModelRow.deployed_model_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(DeployedModelRow.deployed_model_id > after)
    return session.scalars(query).all()


def count(session: Session, account_id: str) -> int:
    query = (
        select(func.count())
        .select_from(DeployedModelRow)
        .where(DeployedModelRow.account_id == account_id)
    )
    return session.scalar(query) or 0


def others_of_model(session: Session, model_pk: int, but: int) -> int:
    """How many deployments of add-on ``model_pk``, other than ``but``, still want it served."""
    query = (
        select(func.count())
        .select_from(DeployedModelRow)
        .where(
            DeployedModelRow.model_pk == model_pk,
            DeployedModelRow.pk != but,
            DeployedModelRow.state != DeployedState.UNDEPLOYING.value,
        )
    )
    return session.scalar(query) or 0


def names_of_model(session: Session, model_pk: int) -> list[str]:
    """Full names of the deployed models of add-on ``model_pk``, in any account."""
    query = (
        select(DeployedModelRow.account_id, DeployedModelRow.deployed_model_id)
        .where(DeployedModelRow.model_pk == model_pk)
        .order_by(DeployedModelRow.account_id, DeployedModelRow.deployed_model_id)
    )
    return [deployed_name(a, d) for a, d in session.execute(query).all()]


def remove(session: Session, pk: int) -> bool:
    """Delete the deployed model; True only for the one transaction that removed it.

    Its quota unit is released on that answer (``DeployedModelService._forget``):
    concurrent deletes of one row wait on each other and all but the first
    remove nothing, so the unit is given back exactly once.
    """
    result = session.execute(delete(DeployedModelRow).where(DeployedModelRow.pk == pk))
    return bool(getattr(result, "rowcount", 0) == 1)


def serving_pairs(session: Session) -> frozenset[tuple[str, str]]:
    """``(account, add-on full name)`` of every add-on loaded for serverless serving.

    The index's input; add-ons placed on an on-demand deployment serve there only.
    """
    query = (
        select(DeployedModelRow.account_id, ModelRow.account_id, ModelRow.model_id)
        .join(ModelRow, ModelRow.pk == DeployedModelRow.model_pk)
        .where(
            DeployedModelRow.state == DeployedState.DEPLOYED.value,
            DeployedModelRow.deployment.is_(None),
        )
    )
    return frozenset(
        (account, model_name(owner, model)) for account, owner, model in session.execute(query)
    )
