"""Each account's effective limits: its plan's defaults, then the operator's overrides.

Serverless requests per minute (SPEC §1): Developer 600, Business as the
operator sets it per account (600 until set), Enterprise unlimited. An
operator override in ``account_limits`` wins on every plan (every number is
a default the operator may change). Token limits per minute exist only
where the operator set them.

Admission reads these on every request, so they are cached in memory per
replica: a write on this replica drops its entry at once; other replicas
pick the change up within ``ttl_s``. An entry in use is re-read in the
background before it expires (``refresh_ahead``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission, Plan
from firebox.clock import Clock
from firebox.errors import InvalidArgument, NotFound
from firebox.limits import quota_repository as repo
from firebox.limits.refresh_ahead import RefreshAhead
from firebox.store.database import Database

DEFAULT_REQUESTS_PER_MINUTE: Final = 600


class Keep(Enum):
    """Marks a limit that an update leaves as it is."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """What one account may do per minute; ``None`` means unlimited (or not limited)."""

    account_id: str
    plan: Plan
    requests_per_minute: int | None
    prompt_tokens_per_minute: int | None = None
    generated_tokens_per_minute: int | None = None
    requests_override: bool = False  # the operator set requests_per_minute


def plan_requests_per_minute(plan: Plan) -> int | None:
    """The plan's default serverless requests per minute (``None``: unlimited)."""
    return None if plan is Plan.ENTERPRISE else DEFAULT_REQUESTS_PER_MINUTE


def account_not_found(account_id: str) -> NotFound:
    return NotFound(f"Account {account_id!r} was not found.", code="account_not_found")


def actor_of(principal: Principal) -> str:
    """How the audit log names who did something."""
    return f"accounts/{principal.account_id}/users/{principal.user_id}"


def _check(value: int | Keep | None, param: str) -> None:
    if isinstance(value, int) and value < 1:
        raise InvalidArgument(
            f"{param} must be at least 1, or null for the plan's default.",
            code="invalid_limit",
            param=param,
        )


class PlanLimits:
    """Reads (cached) and changes (operator only) the per-minute limits of accounts."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        ttl_s: float = 5.0,
        trusted: Callable[[], bool] | None = None,
        trusted_ttl_s: float = 5.0,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._ttl = ttl_s
        # While ``trusted()`` (every change made elsewhere is announced, see
        # ``limits/changes.py``), entries may live ``trusted_ttl_s``.
        self._trusted = trusted
        self._trusted_ttl = trusted_ttl_s
        self._on_change = on_change
        self._cache: dict[str, tuple[float, AccountLimits]] = {}
        self._generations: dict[str, int] = {}  # bumped by invalidate
        self._epoch = 0  # bumped by forget_all
        self._lock = threading.Lock()
        self.refresh = RefreshAhead("plan limits")

    def cached(self, account_id: str) -> AccountLimits | None:
        """The cached limits, or ``None`` when not cached or stale (no I/O).

        An entry past 3/4 of its lifetime is re-read in the background meanwhile.
        """
        with self._lock:
            entry = self._cache.get(account_id)
        if entry is None:
            return None
        age = time.monotonic() - entry[0]
        ttl = self._trusted_ttl if self._trusted is not None and self._trusted() else self._ttl
        if age > ttl:
            return None
        if self.refresh.due(age, ttl):
            self.refresh.start(account_id, lambda: self.load(account_id))
        return entry[1]

    def limits(self, account_id: str) -> AccountLimits:
        """The account's limits, from the cache or else the database."""
        return self.cached(account_id) or self.load(account_id)

    def load(self, account_id: str) -> AccountLimits:
        """Read the account's limits from the database and cache them.

        Not cached when the entry was invalidated while this read ran (the
        read may predate the change that invalidated it).
        """
        with self._lock:
            generation = (self._epoch, self._generations.get(account_id, 0))
        read_at = time.monotonic()
        with self._db.transaction() as session:
            plan_name = repo.get_plan(session, account_id)
            if plan_name is None:
                raise account_not_found(account_id)
            row = repo.get_limits(session, account_id)
            plan = Plan(plan_name)
            rpm = row.requests_per_minute if row is not None else None
            found = AccountLimits(
                account_id=account_id,
                plan=plan,
                requests_per_minute=rpm if rpm is not None else plan_requests_per_minute(plan),
                prompt_tokens_per_minute=row.prompt_tokens_per_minute if row else None,
                generated_tokens_per_minute=row.generated_tokens_per_minute if row else None,
                requests_override=rpm is not None,
            )
        with self._lock:
            if (self._epoch, self._generations.get(account_id, 0)) == generation:
                self._cache[account_id] = (read_at, found)
        return found

    def invalidate(self, account_id: str) -> None:
        """Forget the cached limits of ``account_id`` (changed here or on another replica)."""
        with self._lock:
            self._cache.pop(account_id, None)
            self._generations[account_id] = self._generations.get(account_id, 0) + 1

    def changed(self, account_id: str) -> None:
        """The account's plan or limits changed on this replica: forget, and tell the others."""
        self.invalidate(account_id)
        if self._on_change is not None:
            self._on_change(account_id)

    def forget_all(self) -> None:
        """Drop every cached entry (changes from other replicas may have been missed)."""
        with self._lock:
            self._cache.clear()
            self._epoch += 1

    def get_account_limits(self, principal: Principal, account_id: str) -> AccountLimits:
        """The account's effective limits, fresh from the database."""
        principal.require(account_id, Permission.ACCOUNT_READ)
        return self.load(account_id)

    def set_account_limits(
        self,
        principal: Principal,
        account_id: str,
        requests_per_minute: int | Keep | None = KEEP,
        *,
        prompt_tokens_per_minute: int | Keep | None = KEEP,
        generated_tokens_per_minute: int | Keep | None = KEEP,
    ) -> AccountLimits:
        """Set (operator only) the account's limits; ``None`` returns one to the plan's default.

        An argument left as ``KEEP`` is not changed. The change is written to
        the audit log and applies on this replica at once.
        """
        principal.require_operator()
        _check(requests_per_minute, "rateLimitRequestsPerMinute")
        _check(prompt_tokens_per_minute, "promptTokensPerMinute")
        _check(generated_tokens_per_minute, "generatedTokensPerMinute")
        now = self._clock.now()
        changes: list[str] = []
        with self._db.transaction() as session:
            if repo.get_plan(session, account_id) is None:
                raise account_not_found(account_id)
            row = repo.limits_for_update(session, account_id, now)
            wanted = (
                ("requests_per_minute", "rateLimitRequestsPerMinute", requests_per_minute),
                ("prompt_tokens_per_minute", "promptTokensPerMinute", prompt_tokens_per_minute),
                (
                    "generated_tokens_per_minute",
                    "generatedTokensPerMinute",
                    generated_tokens_per_minute,
                ),
            )
            for column, label, value in wanted:
                if isinstance(value, Keep) or getattr(row, column) == value:
                    continue
                changes.append(f"{label}: {_show(getattr(row, column))} -> {_show(value)}")
                setattr(row, column, value)
            if changes:
                row.update_time = now
                detail = "; ".join(changes)
                repo.add_audit(
                    session, account_id, now, actor_of(principal), "LIMITS_UPDATED", detail
                )
        self.changed(account_id)
        return self.load(account_id)


def _show(value: int | None) -> str:
    return "default" if value is None else str(value)
