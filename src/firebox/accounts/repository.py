"""Queries of the accounts slice. Every function takes the caller's session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow, ApiKeyRow, UserRow
from firebox.store.locking import lock_rows


def get_account(session: Session, account_id: str) -> AccountRow | None:
    return session.get(AccountRow, account_id)


def account_for_update(session: Session, account_id: str) -> AccountRow | None:
    """The account, locked until the transaction ends; ``None`` if there is none.

    Every change that must keep a rule over the account's users (the plan's
    user limit, at least one admin) takes this lock before counting them, so
    concurrent changes of one account's membership, roles or plan run one at
    a time and each sees the others' result.
    """
    lock_rows(session, AccountRow, AccountRow.id == account_id)
    return session.get(AccountRow, account_id, populate_existing=True)


def list_accounts(session: Session, *, after: str | None, limit: int) -> Sequence[AccountRow]:
    query = select(AccountRow).order_by(AccountRow.id).limit(limit)
    if after is not None:
        query = query.where(AccountRow.id > after)
    return session.scalars(query).all()


def count_accounts(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AccountRow)) or 0


def get_user(session: Session, account_id: str, user_id: str) -> UserRow | None:
    return session.scalar(
        select(UserRow).where(UserRow.account_id == account_id, UserRow.user_id == user_id)
    )


def get_user_by_pk(session: Session, pk: int) -> UserRow | None:
    return session.get(UserRow, pk)


def list_users(
    session: Session, account_id: str, *, after: str | None, limit: int
) -> Sequence[UserRow]:
    query = (
        select(UserRow)
        .where(UserRow.account_id == account_id)
        .order_by(UserRow.user_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(UserRow.user_id > after)
    return session.scalars(query).all()


def count_users(session: Session, account_id: str, *, role: str | None = None) -> int:
    query = select(func.count()).select_from(UserRow).where(UserRow.account_id == account_id)
    if role is not None:
        query = query.where(UserRow.role == role)
    return session.scalar(query) or 0


def email_taken(session: Session, account_id: str, email: str) -> bool:
    query = select(UserRow.pk).where(UserRow.account_id == account_id, UserRow.email == email)
    return session.scalar(query) is not None


def active_key_by_hash(session: Session, key_hash: str) -> tuple[ApiKeyRow, UserRow] | None:
    row = session.execute(
        select(ApiKeyRow, UserRow)
        .join(UserRow, UserRow.pk == ApiKeyRow.user_pk)
        .where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoke_time.is_(None))
    ).first()
    return None if row is None else (row[0], row[1])


def get_key(session: Session, user_pk: int, key_id: str) -> ApiKeyRow | None:
    return session.scalar(
        select(ApiKeyRow).where(
            ApiKeyRow.user_pk == user_pk,
            ApiKeyRow.key_id == key_id,
            ApiKeyRow.revoke_time.is_(None),
        )
    )


def list_keys(
    session: Session, user_pk: int, *, after: str | None, limit: int
) -> Sequence[ApiKeyRow]:
    query = (
        select(ApiKeyRow)
        .where(ApiKeyRow.user_pk == user_pk, ApiKeyRow.revoke_time.is_(None))
        .order_by(ApiKeyRow.key_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(ApiKeyRow.key_id > after)
    return session.scalars(query).all()


def active_key_hashes_of_user(session: Session, user_pk: int) -> list[str]:
    query = select(ApiKeyRow.key_hash).where(
        ApiKeyRow.user_pk == user_pk, ApiKeyRow.revoke_time.is_(None)
    )
    return list(session.scalars(query).all())


def operator_key_exists(session: Session) -> bool:
    query = select(ApiKeyRow.key_id).where(
        ApiKeyRow.is_operator.is_(True), ApiKeyRow.revoke_time.is_(None)
    )
    return session.scalar(query.limit(1)) is not None
