"""First start: the platform account, the operator key and the demo account.

Runs at every start and is idempotent: it creates only what is missing, so a
restart never issues new keys, and a ``FIREBOX_ADMIN_KEY`` set later is
registered on the next start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firebox.accounts import repository as repo
from firebox.accounts.credentials import DEMO_ACCOUNT
from firebox.accounts.key_service import ApiKeyService
from firebox.accounts.keys import hash_secret
from firebox.accounts.models import AccountRow, UserRow
from firebox.accounts.roles import Plan, Role
from firebox.clock import Clock
from firebox.store.database import Database

PLATFORM_ACCOUNT = "firebox"
OPERATOR_USER = "operator"
DEMO_USER = "demo"


@dataclass
class BootstrapResult:
    """Secrets created by this start (empty on a restart) and where they were saved."""

    operator_key: str | None = None
    demo_key: str | None = None
    created: list[str] = field(default_factory=list)


def run_bootstrap(
    db: Database,
    clock: Clock,
    *,
    admin_key: str | None,
    with_demo: bool,
) -> BootstrapResult:
    """Create whatever of the platform account, operator key and demo account is missing."""
    result = BootstrapResult()
    now = clock.now()
    with db.transaction() as session:
        platform = repo.get_account(session, PLATFORM_ACCOUNT)
        if platform is None:
            platform = AccountRow(
                id=PLATFORM_ACCOUNT,
                display_name="Firebox platform",
                email="",
                plan=Plan.ENTERPRISE.value,
                create_time=now,
                update_time=now,
            )
            session.add(platform)
            result.created.append(f"accounts/{PLATFORM_ACCOUNT}")
        operator = repo.get_user(session, PLATFORM_ACCOUNT, OPERATOR_USER)
        if operator is None:
            operator = UserRow(
                account_id=PLATFORM_ACCOUNT,
                user_id=OPERATOR_USER,
                role=Role.ADMIN.value,
                display_name="Platform operator",
                service_account=True,
                create_time=now,
                update_time=now,
            )
            session.add(operator)
            session.flush()
        if admin_key:
            if repo.active_key_by_hash(session, hash_secret(admin_key)) is None:
                ApiKeyService.issue(
                    session,
                    operator,
                    "FIREBOX_ADMIN_KEY",
                    None,
                    now,
                    secret=admin_key,
                    is_operator=True,
                )
                result.created.append("operator key (FIREBOX_ADMIN_KEY)")
        elif not repo.operator_key_exists(session):
            secret, _ = ApiKeyService.issue(
                session, operator, "operator", None, now, is_operator=True
            )
            result.operator_key = secret
            result.created.append("operator key")

        if with_demo and repo.get_account(session, DEMO_ACCOUNT) is None:
            session.add(
                AccountRow(
                    id=DEMO_ACCOUNT,
                    display_name="Demo",
                    email="demo@example.com",
                    plan=Plan.DEVELOPER.value,
                    create_time=now,
                    update_time=now,
                )
            )
            session.flush()
            user = UserRow(
                account_id=DEMO_ACCOUNT,
                user_id=DEMO_USER,
                role=Role.ADMIN.value,
                display_name="Demo user",
                email="demo@example.com",
                create_time=now,
                update_time=now,
            )
            session.add(user)
            session.flush()
            secret, _ = ApiKeyService.issue(session, user, "demo", None, now)
            result.demo_key = secret
            result.created.append(f"accounts/{DEMO_ACCOUNT} with user {DEMO_USER}")
    return result
