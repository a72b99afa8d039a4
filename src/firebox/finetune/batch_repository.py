"""Queries of batch inference: jobs, results and files (inside a caller's transaction)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.finetune.batch_models import (
    FINAL_STATES,
    RUNNABLE_STATES,
    BatchFileRow,
    BatchJobRow,
    BatchResultRow,
)
from firebox.store.locking import lock_rows


def job(
    session: Session, account_id: str, job_id: str, *, lock: bool = False
) -> BatchJobRow | None:
    criteria = (BatchJobRow.account_id == account_id, BatchJobRow.job_id == job_id)
    if lock:  # FOR UPDATE is a no-op on SQLite: lock_rows takes its writer lock first
        lock_rows(session, BatchJobRow, *criteria)
    return session.scalars(select(BatchJobRow).where(*criteria)).first()


def job_by_pk(session: Session, pk: int, *, lock: bool = False) -> BatchJobRow | None:
    if lock:
        lock_rows(session, BatchJobRow, BatchJobRow.pk == pk)
    return session.scalars(select(BatchJobRow).where(BatchJobRow.pk == pk)).first()


def jobs(
    session: Session, account_id: str, api: str | None, after_pk: int | None, limit: int
) -> Sequence[BatchJobRow]:
    """The account's jobs, oldest first, after the keyset cursor ``after_pk``."""
    query = select(BatchJobRow).where(BatchJobRow.account_id == account_id)
    if api is not None:
        query = query.where(BatchJobRow.api == api)
    if after_pk is not None:
        query = query.where(BatchJobRow.pk > after_pk)
    return session.scalars(query.order_by(BatchJobRow.pk).limit(limit)).all()


def count_jobs(session: Session, account_id: str, api: str | None) -> int:
    query = select(func.count()).select_from(BatchJobRow)
    query = query.where(BatchJobRow.account_id == account_id)
    if api is not None:
        query = query.where(BatchJobRow.api == api)
    return int(session.scalar(query) or 0)


def runnable(session: Session, now: datetime, exclude: Sequence[int], limit: int) -> list[int]:
    """Jobs a replica may take: waiting, or running under a lease that ran out."""
    query = select(BatchJobRow.pk).where(
        BatchJobRow.state.in_([state.value for state in RUNNABLE_STATES]),
        or_(BatchJobRow.lease_until.is_(None), BatchJobRow.lease_until < now),
    )
    if exclude:
        query = query.where(BatchJobRow.pk.not_in(list(exclude)))
    return list(session.scalars(query.order_by(BatchJobRow.pk).limit(limit)).all())


def done_lines(session: Session, job_pk: int) -> set[int]:
    rows = session.scalars(select(BatchResultRow.line).where(BatchResultRow.job_pk == job_pk))
    return set(rows.all())


def add_result(session: Session, job_pk: int, line: int, ok: bool, output: str) -> bool:
    """Insert the result of ``line``; False when it was already there (nothing changes)."""
    try:
        with session.begin_nested():
            session.add(BatchResultRow(job_pk=job_pk, line=line, ok=ok, output=output))
    except IntegrityError:
        return False
    return True


def results(session: Session, job_pk: int, after_line: int, limit: int) -> Sequence[BatchResultRow]:
    query = (
        select(BatchResultRow)
        .where(BatchResultRow.job_pk == job_pk, BatchResultRow.line > after_line)
        .order_by(BatchResultRow.line)
        .limit(limit)
    )
    return session.scalars(query).all()


def iter_results(session: Session, job_pk: int, page: int = 500) -> Iterator[BatchResultRow]:
    """Every result of the job in line order, a page at a time."""
    after = -1
    while True:
        rows = results(session, job_pk, after, page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1].line


def delete_results(session: Session, job_pk: int) -> None:
    session.execute(delete(BatchResultRow).where(BatchResultRow.job_pk == job_pk))


def bump(
    session: Session,
    job_pk: int,
    *,
    ok: bool,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    now: datetime,
) -> None:
    """Count one more finished line on the job (an atomic update, no lost increments)."""
    values = {
        BatchJobRow.input_tokens: BatchJobRow.input_tokens + input_tokens,
        BatchJobRow.output_tokens: BatchJobRow.output_tokens + output_tokens,
        BatchJobRow.cached_tokens: BatchJobRow.cached_tokens + cached_tokens,
        BatchJobRow.update_time: now,
    }
    if ok:
        values[BatchJobRow.completed] = BatchJobRow.completed + 1
    else:
        values[BatchJobRow.failed] = BatchJobRow.failed + 1
    session.execute(update(BatchJobRow).where(BatchJobRow.pk == job_pk).values(values))


def file(session: Session, account_id: str, file_id: str) -> BatchFileRow | None:
    return session.scalars(
        select(BatchFileRow).where(
            BatchFileRow.account_id == account_id, BatchFileRow.id == file_id
        )
    ).first()


def files(
    session: Session, account_id: str, purpose: str | None, after_id: str | None, limit: int
) -> Sequence[BatchFileRow]:
    query = select(BatchFileRow).where(BatchFileRow.account_id == account_id)
    if purpose:
        query = query.where(BatchFileRow.purpose == purpose)
    if after_id is not None:
        query = query.where(BatchFileRow.id > after_id)
    return session.scalars(query.order_by(BatchFileRow.id).limit(limit)).all()


def job_using(session: Session, account_id: str, dataset_name: str) -> str | None:
    """The id of an unfinished job of the account reading or writing the dataset, if any."""
    query = select(BatchJobRow.job_id).where(
        BatchJobRow.account_id == account_id,
        BatchJobRow.state.not_in([state.value for state in FINAL_STATES]),
        or_(BatchJobRow.input_dataset == dataset_name, BatchJobRow.output_dataset == dataset_name),
    )
    return session.scalars(query.limit(1)).first()
