"""Rules for accounts and their users: who may create, see and change what."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.exc import IntegrityError

from firebox.accounts import repository as repo
from firebox.accounts.ids import id_from_email, validate_id
from firebox.accounts.models import AccountRow, UserRow
from firebox.accounts.principal import Principal
from firebox.accounts.revocation import RevocationBus
from firebox.accounts.roles import Permission, Plan, Role
from firebox.accounts.schemas import (
    Account,
    AccountCreate,
    AccountList,
    AccountUpdate,
    User,
    UserCreate,
    UserList,
    UserUpdate,
)
from firebox.clock import Clock
from firebox.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from firebox.paging import decode_token, next_token, page_size
from firebox.store.database import Database


def account_not_found(account_id: str) -> NotFound:
    return NotFound(f"Account {account_id!r} was not found.", code="account_not_found")


def user_not_found(account_id: str, user_id: str) -> NotFound:
    return NotFound(
        f"User {user_id!r} was not found in account {account_id!r}.", code="user_not_found"
    )


class AccountListener(Protocol):
    """What other slices do when an account appears or its limits change.

    Billing opens the account's books (the free credit) on creation; limits
    stores the operator's rate limit. The accounts slice imports neither:
    ``services.py`` passes a listener in.
    """

    def account_created(self, account_id: str) -> None: ...

    def rate_limit_changed(
        self, principal: Principal, account_id: str, requests_per_minute: int | None
    ) -> None: ...

    def plan_changed(self, account_id: str) -> None: ...


class AccountService:
    """Creates, reads and updates accounts."""

    def __init__(self, db: Database, clock: Clock, listener: AccountListener | None = None) -> None:
        self._db = db
        self._clock = clock
        self._listener = listener

    def create(self, principal: Principal, account_id: str, body: AccountCreate) -> Account:
        """Create an account (operator only). It starts with no user."""
        principal.require_operator()
        validate_id(account_id, "account", "accountId")
        now = self._clock.now()
        row = AccountRow(
            id=account_id,
            display_name=body.display_name or account_id,
            email=str(body.email or ""),
            plan=body.plan.value,
            state="READY",
            suspend_state="UNSUSPENDED",
            create_time=now,
            update_time=now,
        )
        try:
            with self._db.transaction() as session:
                if repo.get_account(session, account_id) is not None:
                    raise AlreadyExists(f"Account {account_id!r} already exists.")
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(f"Account {account_id!r} already exists.") from None
        if self._listener is not None:
            self._listener.account_created(account_id)
        return Account.of(row)

    def get(self, principal: Principal, account_id: str) -> Account:
        principal.require(account_id, Permission.ACCOUNT_READ)
        with self._db.transaction() as session:
            row = repo.get_account(session, account_id)
            if row is None:
                raise account_not_found(account_id)
            return Account.of(row)

    def list(self, principal: Principal, size: int | None, token: str | None) -> AccountList:
        """All accounts for the operator; a member sees only its own account."""
        limit = page_size(size)
        after = decode_token(token)
        with self._db.transaction() as session:
            if principal.is_operator:
                rows = list(repo.list_accounts(session, after=after, limit=limit))
                total = repo.count_accounts(session)
            else:
                own = repo.get_account(session, principal.account_id)
                rows = [own] if own is not None and (after is None or own.id > after) else []
                total = 1
            return AccountList(
                accounts=[Account.of(r) for r in rows],
                next_page_token=next_token([r.id for r in rows], limit),
                total_size=total,
            )

    def update(self, principal: Principal, account_id: str, body: AccountUpdate) -> Account:
        principal.require(account_id, Permission.ACCOUNT_WRITE)
        if body.plan is not None and not principal.is_operator:
            raise PermissionDenied(
                "Only the platform operator can change an account's plan.",
                code="operator_only",
                param="plan",
            )
        rate_limit_set = "rate_limit_requests_per_minute" in body.model_fields_set
        if rate_limit_set and not principal.is_operator:
            raise PermissionDenied(
                "Only the platform operator can change an account's rate limit.",
                code="operator_only",
                param="rateLimitRequestsPerMinute",
            )
        with self._db.transaction() as session:
            row = repo.account_for_update(session, account_id)
            if row is None:
                raise account_not_found(account_id)
            if body.plan is Plan.DEVELOPER and repo.count_users(session, account_id) > 1:
                raise FailedPrecondition(
                    "The Developer plan allows a single user; remove the other users "
                    "before moving this account to the Developer plan.",
                    code="plan_user_limit",
                    param="plan",
                )
            if body.display_name is not None:
                row.display_name = body.display_name
            if body.email is not None:
                row.email = str(body.email)
            if body.plan is not None:
                row.plan = body.plan.value
            row.update_time = self._clock.now()
            account = Account.of(row)
        if body.plan is not None and self._listener is not None:
            self._listener.plan_changed(account_id)
        if rate_limit_set and self._listener is not None:
            self._listener.rate_limit_changed(
                principal, account_id, body.rate_limit_requests_per_minute
            )
        return account


class UserService:
    """Members of an account and their roles."""

    def __init__(self, db: Database, clock: Clock, revocations: RevocationBus) -> None:
        self._db = db
        self._clock = clock
        self._revocations = revocations

    def create(
        self, principal: Principal, account_id: str, user_id: str | None, body: UserCreate
    ) -> User:
        principal.require(account_id, Permission.USERS_WRITE)
        if user_id:
            validate_id(user_id, "user", "userId")
        elif body.email:
            user_id = id_from_email(str(body.email))
        else:
            raise FailedPrecondition(
                "Give either userId or email so the user can be named.", param="userId"
            )
        now = self._clock.now()
        try:
            with self._db.transaction() as session:
                account = repo.account_for_update(session, account_id)
                if account is None:
                    raise account_not_found(account_id)
                if repo.get_user(session, account_id, user_id) is not None:
                    raise AlreadyExists(f"User {user_id!r} already exists in {account_id!r}.")
                if not Plan(account.plan).allows_teams and repo.count_users(session, account_id):
                    raise PermissionDenied(
                        "The Developer plan allows a single user per account. Move to the "
                        "Business plan to add team members.",
                        code="plan_upgrade_required",
                    )
                if body.email and repo.email_taken(session, account_id, str(body.email)):
                    raise AlreadyExists(
                        f"A user with email {body.email!r} already belongs to {account_id!r}.",
                        param="email",
                    )
                row = UserRow(
                    account_id=account_id,
                    user_id=user_id,
                    role=body.role.value,
                    display_name=body.display_name or user_id,
                    email=str(body.email) if body.email else None,
                    service_account=body.service_account,
                    state="READY",
                    create_time=now,
                    update_time=now,
                )
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(f"User {user_id!r} already exists in {account_id!r}.") from None
        return User.of(row)

    def get(self, principal: Principal, account_id: str, user_id: str) -> User:
        principal.require(account_id, Permission.USERS_READ)
        with self._db.transaction() as session:
            row = repo.get_user(session, account_id, user_id)
            if row is None:
                raise user_not_found(account_id, user_id)
            return User.of(row)

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> UserList:
        principal.require(account_id, Permission.USERS_READ)
        limit = page_size(size)
        after = decode_token(token)
        with self._db.transaction() as session:
            if repo.get_account(session, account_id) is None:
                raise account_not_found(account_id)
            rows = list(repo.list_users(session, account_id, after=after, limit=limit))
            return UserList(
                users=[User.of(r) for r in rows],
                next_page_token=next_token([r.user_id for r in rows], limit),
                total_size=repo.count_users(session, account_id),
            )

    def update(self, principal: Principal, account_id: str, user_id: str, body: UserUpdate) -> User:
        principal.require(account_id, Permission.USERS_WRITE)
        revoked: list[str] = []
        with self._db.transaction() as session:
            # The last-admin rule counts the account's admins: hold the account.
            repo.account_for_update(session, account_id)
            row = repo.get_user(session, account_id, user_id)
            if row is None:
                raise user_not_found(account_id, user_id)
            if body.role is not None and body.role.value != row.role:
                if (
                    row.role == Role.ADMIN
                    and repo.count_users(session, account_id, role="admin") == 1
                ):
                    raise FailedPrecondition(
                        f"{user_id!r} is the last admin of {account_id!r}; make another user "
                        "admin first.",
                        code="last_admin",
                        param="role",
                    )
                row.role = body.role.value
                # Cached principals carry the role: drop them everywhere.
                revoked = repo.active_key_hashes_of_user(session, row.pk)
            if body.email is not None and str(body.email) != row.email:
                if repo.email_taken(session, account_id, str(body.email)):
                    raise AlreadyExists(
                        f"A user with email {body.email!r} already belongs to {account_id!r}.",
                        param="email",
                    )
                row.email = str(body.email)
            if body.display_name is not None:
                row.display_name = body.display_name
            if body.service_account is not None:
                row.service_account = body.service_account
            row.update_time = self._clock.now()
            user = User.of(row)
        for key_hash in revoked:
            self._revocations.publish(key_hash)
        return user
