"""Plans, roles and the permissions each role grants.

Roles are named as the Fireworks SDK names them. A permission is checked by
the service, never by an endpoint, so every route of a resource enforces the
same rule.
"""

from __future__ import annotations

from enum import StrEnum


class Plan(StrEnum):
    """What an account may do (SPEC §1). Each plan includes the one below."""

    DEVELOPER = "DEVELOPER"
    BUSINESS = "BUSINESS"
    ENTERPRISE = "ENTERPRISE"

    @property
    def allows_teams(self) -> bool:
        """Developer accounts have a single user; higher plans have teams."""
        return self is not Plan.DEVELOPER


class Role(StrEnum):
    """A user's role inside its account."""

    ADMIN = "admin"
    USER = "user"
    CONTRIBUTOR = "contributor"
    INFERENCE_USER = "inference-user"


class Permission(StrEnum):
    """One thing a principal may do inside an account."""

    ACCOUNT_READ = "account.read"
    ACCOUNT_WRITE = "account.write"
    USERS_READ = "users.read"
    USERS_WRITE = "users.write"
    OWN_KEYS = "keys.own"  # create, list and delete one's own API keys
    ANY_KEYS = "keys.any"  # manage the API keys of every user of the account
    RESOURCES_READ = "resources.read"  # models, deployments, datasets, jobs
    RESOURCES_WRITE = "resources.write"
    BILLING_READ = "billing.read"
    BILLING_WRITE = "billing.write"
    INFERENCE = "inference"


_P = Permission
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset(
        {
            _P.ACCOUNT_READ,
            _P.USERS_READ,
            _P.OWN_KEYS,
            _P.RESOURCES_READ,
            _P.RESOURCES_WRITE,
            _P.BILLING_READ,
            _P.INFERENCE,
        }
    ),
    Role.CONTRIBUTOR: frozenset(
        {_P.ACCOUNT_READ, _P.USERS_READ, _P.OWN_KEYS, _P.RESOURCES_READ, _P.INFERENCE}
    ),
    Role.INFERENCE_USER: frozenset({_P.ACCOUNT_READ, _P.INFERENCE}),
}
