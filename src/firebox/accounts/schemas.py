"""Wire models of accounts, users and API keys, shaped as the Fireworks SDK expects."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import EmailStr, Field

from firebox.accounts.models import AccountRow, ApiKeyRow, UserRow
from firebox.accounts.roles import Plan, Role
from firebox.wire import RequestModel, Timestamp, WireModel

SuspendState = Literal[
    "UNSUSPENDED",
    "FAILED_PAYMENTS",
    "CREDIT_DEPLETED",
    "MONTHLY_SPEND_LIMIT_EXCEEDED",
    "BLOCKED_BY_ABUSE_RULE",
]


class AccountCreate(RequestModel):
    display_name: str = Field(default="", max_length=63)
    email: EmailStr | None = None
    plan: Plan = Plan.DEVELOPER


class AccountUpdate(RequestModel):
    display_name: str | None = Field(default=None, max_length=63)
    email: EmailStr | None = None
    plan: Plan | None = None
    # Operator only; null returns the account to its plan's default (SPEC §5).
    rate_limit_requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)


class Account(WireModel):
    name: str
    display_name: str
    email: str
    account_type: Literal["ACCOUNT_TYPE_UNSPECIFIED", "ENTERPRISE"]
    plan: Plan
    state: str
    suspend_state: SuspendState
    create_time: datetime
    update_time: datetime

    @classmethod
    def of(cls, row: AccountRow) -> Account:
        return cls(
            name=f"accounts/{row.id}",
            display_name=row.display_name,
            email=row.email,
            account_type="ENTERPRISE"
            if row.plan == Plan.ENTERPRISE
            else "ACCOUNT_TYPE_UNSPECIFIED",
            plan=Plan(row.plan),
            state=row.state,
            suspend_state=row.suspend_state,
            create_time=row.create_time,
            update_time=row.update_time,
        )


class AccountList(WireModel):
    accounts: list[Account]
    next_page_token: str = ""
    total_size: int


class UserCreate(RequestModel):
    role: Role
    display_name: str = Field(default="", max_length=63)
    email: EmailStr | None = None
    service_account: bool = False


class UserUpdate(RequestModel):
    role: Role | None = None
    display_name: str | None = Field(default=None, max_length=63)
    email: EmailStr | None = None
    service_account: bool | None = None


class User(WireModel):
    name: str
    role: Role
    display_name: str
    email: str | None
    service_account: bool
    state: str
    create_time: datetime
    update_time: datetime

    @classmethod
    def of(cls, row: UserRow) -> User:
        return cls(
            name=f"accounts/{row.account_id}/users/{row.user_id}",
            role=Role(row.role),
            display_name=row.display_name,
            email=row.email,
            service_account=row.service_account,
            state=row.state,
            create_time=row.create_time,
            update_time=row.update_time,
        )


class UserList(WireModel):
    users: list[User]
    next_page_token: str = ""
    total_size: int


class ApiKeySpec(RequestModel):
    display_name: str = Field(default="default", min_length=1, max_length=63)
    expire_time: Timestamp | None = None


class ApiKeyCreate(RequestModel):
    api_key: ApiKeySpec = Field(default_factory=ApiKeySpec)


class ApiKeyDelete(RequestModel):
    key_id: str = Field(min_length=1, max_length=32)


class ApiKey(WireModel):
    key_id: str
    display_name: str
    prefix: str
    email: str | None
    create_time: datetime
    expire_time: datetime | None
    secure: bool = True
    key: str | None = Field(default=None, description="The secret; returned only on creation.")

    @classmethod
    def of(cls, row: ApiKeyRow, user: UserRow, secret: str | None = None) -> ApiKey:
        return cls(
            key_id=row.key_id,
            display_name=row.display_name,
            prefix=row.prefix,
            email=user.email,
            create_time=row.create_time,
            expire_time=row.expire_time,
            key=secret,
        )


class ApiKeyList(WireModel):
    api_keys: list[ApiKey]
    next_page_token: str = ""
    total_size: int
