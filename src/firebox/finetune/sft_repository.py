"""Queries of the ``sft_jobs`` table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from firebox.finetune.sft_models import JobState, SftJobRow

# States a runner may pick a job up in (RUNNING and CANCELLING only once their lease ran out).
_WAITING = (JobState.CREATING.value, JobState.PENDING.value)
_HELD = (JobState.RUNNING.value, JobState.CANCELLING.value)


def get(session: Session, account_id: str, job_id: str) -> SftJobRow | None:
    return session.scalars(
        select(SftJobRow).where(SftJobRow.account_id == account_id, SftJobRow.job_id == job_id)
    ).one_or_none()


def by_pk(session: Session, pk: int) -> SftJobRow | None:
    return session.get(SftJobRow, pk)


def page(session: Session, account_id: str, after: str | None, limit: int) -> Sequence[SftJobRow]:
    query = select(SftJobRow).where(SftJobRow.account_id == account_id)
    if after is not None:
        query = query.where(SftJobRow.job_id > after)
    return session.scalars(query.order_by(SftJobRow.job_id).limit(limit)).all()


def count(session: Session, account_id: str) -> int:
    query = select(func.count()).select_from(SftJobRow).where(SftJobRow.account_id == account_id)
    return int(session.scalar(query) or 0)


def output_taken(session: Session, account_id: str, output_model: str, pk: int | None) -> bool:
    """Whether another job that has not failed or been cancelled already names this output."""
    query = select(SftJobRow.pk).where(
        SftJobRow.account_id == account_id,
        SftJobRow.output_model == output_model,
        SftJobRow.state.not_in((JobState.FAILED.value, JobState.CANCELLED.value)),
    )
    if pk is not None:
        query = query.where(SftJobRow.pk != pk)
    return session.scalars(query.limit(1)).first() is not None


def claimable(session: Session, now: datetime, limit: int) -> list[int]:
    """Jobs waiting for a runner, oldest first (and those whose runner died)."""
    query = (
        select(SftJobRow.pk)
        .where(
            or_(
                and_(
                    SftJobRow.state.in_(_WAITING),
                    or_(SftJobRow.lease_until.is_(None), SftJobRow.lease_until < now),
                ),
                and_(SftJobRow.state.in_(_HELD), SftJobRow.lease_until < now),
            )
        )
        .order_by(SftJobRow.create_time, SftJobRow.pk)
        .limit(limit)
    )
    return list(session.scalars(query).all())


def claim(session: Session, pk: int, owner: str, until: datetime, now: datetime) -> bool:
    """Take job ``pk`` for ``owner`` unless another runner holds a live lease on it."""
    result = session.execute(
        update(SftJobRow)
        .where(
            SftJobRow.pk == pk,
            or_(SftJobRow.lease_until.is_(None), SftJobRow.lease_until < now),
            SftJobRow.state.in_((*_WAITING, *_HELD)),
        )
        .values(lease_owner=owner, lease_until=until)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def set_fields(session: Session, pk: int, owner: str | None, **values: Any) -> bool:
    """Change job ``pk``; with ``owner``, only while that runner still holds it."""
    query = update(SftJobRow).where(SftJobRow.pk == pk)
    if owner is not None:
        query = query.where(SftJobRow.lease_owner == owner)
    result = session.execute(query.values(**values))
    return bool(getattr(result, "rowcount", 0) == 1)


def renew(session: Session, pks: list[int], owner: str, until: datetime) -> None:
    if pks:
        session.execute(
            update(SftJobRow)
            .where(SftJobRow.pk.in_(pks), SftJobRow.lease_owner == owner)
            .values(lease_until=until)
        )


def states(session: Session, pks: list[int]) -> dict[int, tuple[str, str]]:
    """``pk -> (state, account_id)`` of the jobs ``pks``."""
    if not pks:
        return {}
    rows = session.execute(
        select(SftJobRow.pk, SftJobRow.state, SftJobRow.account_id).where(SftJobRow.pk.in_(pks))
    ).all()
    return {pk: (state, account) for pk, state, account in rows}


def paused_for_suspension(session: Session) -> list[tuple[int, str]]:
    rows = session.execute(
        select(SftJobRow.pk, SftJobRow.account_id).where(
            SftJobRow.state == JobState.PAUSED.value, SftJobRow.pause_reason == "SUSPENDED"
        )
    ).all()
    return [(pk, account) for pk, account in rows]


def promote_created(session: Session, now: datetime) -> None:
    """Jobs checked at create (``CREATING``) now wait for a runner slot (``PENDING``)."""
    session.execute(
        update(SftJobRow)
        .where(SftJobRow.state == JobState.CREATING.value, SftJobRow.lease_owner.is_(None))
        .values(state=JobState.PENDING.value, update_time=now)
    )
