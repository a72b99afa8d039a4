"""Fire N identical requests at once at a real server, then check the invariants.

``fire`` releases its threads through one ``threading.Barrier``, each with its
own connection, so the requests really overlap on the server (and in
PostgreSQL, where each gets its own transaction). ``violations`` reads the
store directly and lists every broken invariant of docs/invariants.md; an
empty list is the pass. Nothing here waits on time: the barrier and the
threads' ends are the only synchronization.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select

from firebox.accounts.models import AccountRow, UserRow
from firebox.billing.models import BillingAccountRow, CreditEntryRow, CreditGrantRow
from firebox.catalog.deployed_models import DeployedModelRow
from firebox.deployments.models import DeploymentRow
from firebox.finetune.dataset_models import DatasetRow
from firebox.limits.models import QuotaRow
from firebox.store.database import Database

# Quotas whose usage counts rows: (quota id, the table of the held units).
COUNTED_QUOTAS = {"deployed-models": DeployedModelRow}
# Quotas whose usage is the accelerators deployments hold (``deployments.quota_units``).
ACCELERATOR_QUOTAS = ("a100-gpus", "h100-gpus")


@dataclass(frozen=True)
class Shot:
    """One request of a burst."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    files: Any = None  # a multipart body instead (httpx ``files=``)
    data: Any = None  # form fields sent beside ``files``


def fire(base_url: str, shots: list[Shot], timeout_s: float = 120.0) -> list[httpx.Response]:
    """Send every shot at once (one thread and connection each); the responses, in order."""
    barrier = threading.Barrier(len(shots))
    results: list[httpx.Response | BaseException | None] = [None] * len(shots)

    def send(index: int, shot: Shot) -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
                request = client.build_request(
                    shot.method,
                    shot.path,
                    headers=shot.headers,
                    json=shot.json,
                    files=shot.files,
                    data=shot.data,
                )
                client.get("/healthz")  # the connection is open before the barrier
                barrier.wait()
                results[index] = client.send(request)
        except BaseException as exc:
            barrier.abort()
            results[index] = exc

    threads = [threading.Thread(target=send, args=(i, s)) for i, s in enumerate(shots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    responses: list[httpx.Response] = []
    for result in results:
        if not isinstance(result, httpx.Response):
            raise AssertionError(f"a request of the burst failed: {result!r}")
        responses.append(result)
    return responses


def burst(base_url: str, shot: Shot, n: int) -> list[httpx.Response]:
    """``n`` copies of one request at once."""
    return fire(base_url, [shot] * n)


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def server_errors(responses: list[httpx.Response]) -> list[str]:
    """``status body`` of every 5xx answer of the burst."""
    return [f"{r.status_code} {r.text}" for r in responses if r.status_code >= 500]


@dataclass(frozen=True)
class Snapshot:
    """What an invariant compares with its state before the burst."""

    accounts_with_admin: frozenset[str]


def snapshot(db: Database) -> Snapshot:
    with db.transaction() as session:
        rows = session.scalars(
            select(UserRow.account_id).where(UserRow.role == "admin").distinct()
        ).all()
    return Snapshot(frozenset(rows))


def violations(db: Database, before: Snapshot | None = None) -> list[str]:
    """Every broken invariant of docs/invariants.md, as a sentence; [] when all hold."""
    found: list[str] = []
    with db.transaction() as session:
        # 1. Quota usage equals the units held.
        for quota_id, table in COUNTED_QUOTAS.items():
            held = dict(
                session.execute(
                    select(table.account_id, func.count()).group_by(table.account_id)
                ).all()
            )
            # A deployment holds one deployed-models unit and its accelerators.
            for account_id, units in session.execute(
                select(DeploymentRow.account_id, func.sum(DeploymentRow.model_units)).group_by(
                    DeploymentRow.account_id
                )
            ):
                held[account_id] = held.get(account_id, 0) + int(units or 0)
            _check_usage(session, quota_id, held, found)
        for quota_id in ACCELERATOR_QUOTAS:
            held = {
                account_id: int(units or 0)
                for account_id, units in session.execute(
                    select(DeploymentRow.account_id, func.sum(DeploymentRow.quota_units))
                    .where(DeploymentRow.quota_id == quota_id)
                    .group_by(DeploymentRow.account_id)
                )
            }
            _check_usage(session, quota_id, held, found)
        # 2. Plan limits hold: a Developer account has at most one user.
        users = dict(
            session.execute(
                select(UserRow.account_id, func.count()).group_by(UserRow.account_id)
            ).all()
        )
        for account_id, plan in session.execute(select(AccountRow.id, AccountRow.plan)):
            if plan == "DEVELOPER" and users.get(account_id, 0) > 1:
                found.append(f"{account_id}: Developer plan with {users[account_id]} users")
        # 3. An account that had an admin keeps one.
        if before is not None:
            admins = set(session.scalars(select(UserRow.account_id).where(UserRow.role == "admin")))
            for account_id in before.accounts_with_admin - admins:
                found.append(f"{account_id}: lost its last admin")
        # 5. A READY dataset holds no upload reservation, and has its counts.
        for dataset_id, reserved, examples in session.execute(
            select(
                DatasetRow.dataset_id, DatasetRow.reserved_bytes, DatasetRow.example_count
            ).where(DatasetRow.state == "READY")
        ):
            if reserved != 0 or not examples:
                found.append(f"dataset {dataset_id}: READY with {reserved} bytes reserved")
        # 4. Every balance equals its ledger; every grant's remainder its entries.
        entries = dict(
            session.execute(
                select(CreditEntryRow.account_id, func.sum(CreditEntryRow.amount_micros)).group_by(
                    CreditEntryRow.account_id
                )
            ).all()
        )
        for account_id, balance in session.execute(
            select(BillingAccountRow.account_id, BillingAccountRow.credit_balance_micros)
        ):
            if int(entries.get(account_id) or 0) != balance:
                found.append(
                    f"{account_id}: credit balance {balance} but ledger {entries.get(account_id)}"
                )
        per_grant = dict(
            session.execute(
                select(CreditEntryRow.grant_id, func.sum(CreditEntryRow.amount_micros)).group_by(
                    CreditEntryRow.grant_id
                )
            ).all()
        )
        for grant_id, remaining in session.execute(
            select(CreditGrantRow.id, CreditGrantRow.remaining_micros)
        ):
            if int(per_grant.get(grant_id) or 0) != remaining:
                found.append(
                    f"grant {grant_id}: remaining {remaining} but ledger {per_grant.get(grant_id)}"
                )
    return found


def _check_usage(session: Any, quota_id: str, held: dict[str, int], found: list[str]) -> None:
    usage = dict(
        session.execute(
            select(QuotaRow.account_id, QuotaRow.usage).where(QuotaRow.quota_id == quota_id)
        ).all()
    )
    for account in set(held) | set(usage):
        if held.get(account, 0) != usage.get(account, 0):
            found.append(
                f"{account}: quota {quota_id} usage {usage.get(account, 0)} but "
                f"{held.get(account, 0)} held"
            )
