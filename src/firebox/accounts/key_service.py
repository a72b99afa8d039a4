"""API keys: issuing, listing and revoking them, and resolving a bearer key.

``Authenticator.resolve`` is on the path of every request: a cache hit is a
dict lookup; a miss is one indexed query, after which the principal is cached.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from firebox.accounts import repository as repo
from firebox.accounts.key_cache import KeyCache
from firebox.accounts.keys import display_prefix, hash_secret, new_key_id, new_secret
from firebox.accounts.models import ApiKeyRow, UserRow
from firebox.accounts.principal import Principal
from firebox.accounts.revocation import RevocationBus
from firebox.accounts.roles import Permission, Role
from firebox.accounts.schemas import ApiKey, ApiKeyList, ApiKeySpec
from firebox.accounts.service import user_not_found
from firebox.clock import Clock
from firebox.errors import InvalidArgument, NotFound, Unauthenticated
from firebox.paging import decode_token, next_token, page_size
from firebox.store.database import Database


class ApiKeyService:
    """Issues and revokes the API keys of an account's users."""

    def __init__(self, db: Database, clock: Clock, revocations: RevocationBus) -> None:
        self._db = db
        self._clock = clock
        self._revocations = revocations

    def _owner(
        self, session: Session, principal: Principal, account_id: str, user_id: str
    ) -> UserRow:
        """The user whose keys are addressed, after checking the caller may manage them."""
        principal.require(account_id, Permission.OWN_KEYS)
        user = repo.get_user(session, account_id, user_id)
        if user is None:
            raise user_not_found(account_id, user_id)
        if not principal.is_operator and user.pk != principal.user_pk:
            principal.require(account_id, Permission.ANY_KEYS)
        return user

    def create(
        self, principal: Principal, account_id: str, user_id: str, spec: ApiKeySpec
    ) -> ApiKey:
        """Issue a key for ``user_id``; the secret is in the answer and nowhere else."""
        now = self._clock.now()
        if spec.expire_time is not None:
            if spec.expire_time.tzinfo is None:
                raise InvalidArgument(
                    "expireTime needs a time zone, e.g. 2030-01-01T00:00:00Z.", param="expireTime"
                )
            if spec.expire_time <= now:
                raise InvalidArgument("expireTime must be in the future.", param="expireTime")
        with self._db.transaction() as session:
            user = self._owner(session, principal, account_id, user_id)
            secret, row = self.issue(session, user, spec.display_name, spec.expire_time, now)
            return ApiKey.of(row, user, secret)

    @staticmethod
    def issue(
        session: Session,
        user: UserRow,
        display_name: str,
        expire_time: datetime | None,
        now: datetime,
        *,
        secret: str | None = None,
        is_operator: bool = False,
    ) -> tuple[str, ApiKeyRow]:
        """Insert a key row for ``user`` (also used by the first-start bootstrap)."""
        secret = secret or new_secret()
        row = ApiKeyRow(
            key_id=new_key_id(),
            key_hash=hash_secret(secret),
            prefix=display_prefix(secret),
            account_id=user.account_id,
            user_pk=user.pk,
            display_name=display_name,
            is_operator=is_operator,
            create_time=now,
            expire_time=expire_time,
        )
        session.add(row)
        session.flush()
        return secret, row

    def list(
        self,
        principal: Principal,
        account_id: str,
        user_id: str,
        size: int | None,
        token: str | None,
    ) -> ApiKeyList:
        limit = page_size(size)
        after = decode_token(token)
        with self._db.transaction() as session:
            user = self._owner(session, principal, account_id, user_id)
            rows = list(repo.list_keys(session, user.pk, after=after, limit=limit))
            return ApiKeyList(
                api_keys=[ApiKey.of(r, user) for r in rows],
                next_page_token=next_token([r.key_id for r in rows], limit),
                total_size=len(repo.active_key_hashes_of_user(session, user.pk)),
            )

    def delete(self, principal: Principal, account_id: str, user_id: str, key_id: str) -> None:
        """Revoke a key; every replica refuses it from the next request on."""
        with self._db.transaction() as session:
            user = self._owner(session, principal, account_id, user_id)
            row = repo.get_key(session, user.pk, key_id)
            if row is None:
                raise NotFound(
                    f"API key {key_id!r} of user {user_id!r} was not found.", code="key_not_found"
                )
            row.revoke_time = self._clock.now()
            key_hash = row.key_hash
        self._revocations.publish(key_hash)


class Authenticator:
    """Resolves a bearer secret to its principal, through the key cache."""

    def __init__(self, db: Database, clock: Clock, cache: KeyCache) -> None:
        self._db = db
        self._clock = clock
        self._cache = cache

    def cached(self, secret: str) -> Principal | None:
        """The principal if the key is in the cache (no I/O), else None."""
        principal = self._cache.get(hash_secret(secret))
        return None if principal is None else self._unexpired(principal)

    def resolve(self, secret: str) -> Principal:
        """The principal of ``secret``, loading it from the database on a cache miss."""
        key_hash = hash_secret(secret)
        principal = self._cache.get(key_hash)
        if principal is None:
            epoch = self._cache.epoch()
            principal = self._load(key_hash)
            self._cache.put(principal, epoch)
        return self._unexpired(principal)

    def _unexpired(self, principal: Principal) -> Principal:
        if principal.expire_time is not None and principal.expire_time <= self._clock.now():
            self._cache.invalidate(principal.key_hash)
            raise Unauthenticated(
                "This API key has expired; create a new one.", code="api_key_expired"
            )
        return principal

    def _load(self, key_hash: str) -> Principal:
        with self._db.transaction() as session:
            found = repo.active_key_by_hash(session, key_hash)
            if found is None:
                raise Unauthenticated(
                    "Invalid API key. Pass a valid key as 'Authorization: Bearer <key>'.",
                )
            key, user = found
            return Principal(
                account_id=key.account_id,
                user_id=user.user_id,
                user_pk=user.pk,
                role=Role(user.role),
                key_id=key.key_id,
                key_hash=key_hash,
                is_operator=key.is_operator,
                expire_time=key.expire_time,
            )

    def invalidate(self, key_hash: str) -> None:
        self._cache.invalidate(key_hash)
