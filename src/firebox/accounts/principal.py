"""Who is calling: the identity an API key resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from firebox.accounts.roles import ROLE_PERMISSIONS, Permission, Role
from firebox.errors import NotFound, PermissionDenied


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind an API key: an account member with a role, or the operator."""

    account_id: str
    user_id: str
    user_pk: int
    role: Role
    key_id: str
    key_hash: str
    is_operator: bool = False
    expire_time: datetime | None = None

    def can(self, permission: Permission) -> bool:
        """Whether this principal's role grants ``permission`` in its own account."""
        return self.is_operator or permission in ROLE_PERMISSIONS[self.role]

    def require(self, account_id: str, permission: Permission) -> None:
        """Raise unless this principal may do ``permission`` inside ``account_id``.

        A principal of another account gets a not-found, exactly as if the
        account did not exist, so that it learns nothing about it.
        """
        if self.is_operator:
            return
        if account_id != self.account_id:
            raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")
        if permission not in ROLE_PERMISSIONS[self.role]:
            raise PermissionDenied(
                f"The {self.role.value!r} role may not do {permission.value!r} in this "
                "account; ask an account admin to change your role.",
                code="role_forbids",
            )

    def require_operator(self) -> None:
        """Raise unless this is the platform operator."""
        if not self.is_operator:
            raise PermissionDenied(
                "Only the platform operator may do this; use the operator key.",
                code="operator_only",
            )
