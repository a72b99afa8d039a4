"""What the runtime (controller, suspension hook) reads from and writes to the deployments.

The API (``service.py``) owns the spec; the runtime owns the observed
columns and the suspension flag. Each method is one transaction and calls
``on_change`` after a commit that changes what should run.

* ``live()``: every deployment that should exist, the controller's desired set
  (build driver targets with ``targets.target_of``).
* ``record(pk, Observed)``: the driver's view written back; a state change is
  recorded as an event, and a deleted deployment whose replicas are gone
  becomes ``DELETED``.
* ``suspend_account`` / ``restore_account``: SPEC §4. Suspension runs every
  live deployment of the account at zero and remembers the replica count it
  wanted (``suspended_replicas``); lifting it restores that count. An
  explicit ``:scale`` to zero is the user's and stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from firebox.clock import Clock
from firebox.deployments import repository as repo
from firebox.deployments.models import DeploymentRow, DeploymentState
from firebox.store.database import Database


@dataclass(frozen=True, slots=True)
class Observed:
    """One deployment as the driver sees it, in the resource's terms."""

    state: DeploymentState | None = None  # None keeps the stored state
    status_code: str = "OK"
    status_message: str = ""
    replica_count: int = 0  # replicas that exist (any state)
    desired_replica_count: int = 0
    pending_replicas: int = 0
    initializing_replicas: int = 0
    ready_replicas: int = 0


class DeploymentControl:
    """The runtime's access to the deployments table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self.on_change: Callable[[], None] | None = None

    def live(self) -> Sequence[DeploymentRow]:
        """Every deployment not deleted (detached rows: read their columns freely)."""
        with self._db.transaction() as session:
            rows = repo.live(session)
            session.expunge_all()
            return rows

    def deleting(self) -> Sequence[DeploymentRow]:
        """Deleted deployments not yet marked ``DELETED`` (their replicas may still run)."""
        with self._db.transaction() as session:
            rows = repo.deleting(session)
            session.expunge_all()
            return rows

    def record(self, pk: int, observed: Observed) -> bool:
        """Write the observation; True if the row's state changed."""
        with self._db.transaction() as session:
            row = repo.get_by_pk_for_update(session, pk)
            if row is None:
                return False
            now = self._clock.now()
            state = observed.state
            if row.delete_time is not None:
                state = (
                    DeploymentState.DELETED
                    if observed.replica_count == 0
                    else DeploymentState.DELETING
                )
            row.status_code = observed.status_code
            row.status_message = observed.status_message[:1000]
            row.replica_count = observed.replica_count
            row.desired_replica_count = observed.desired_replica_count
            row.pending_replicas = observed.pending_replicas
            row.initializing_replicas = observed.initializing_replicas
            row.ready_replicas = observed.ready_replicas
            row.observed_time = now
            changed = state is not None and state.value != row.state
            if changed and state is not None:
                detail = f"{row.state} -> {state.value}"
                if observed.status_message:
                    detail += f": {observed.status_message}"
                repo.add_event(session, row.pk, now, "STATE", detail)
                row.state = state.value
                row.update_time = now
            return changed

    def suspend_account(self, account_id: str) -> int:
        """Run the account's deployments at zero, remembering their counts; how many changed."""
        changed = 0
        with self._db.transaction() as session:
            now = self._clock.now()
            for row in repo.live_of_account_for_update(session, account_id):
                if row.suspended:
                    continue
                row.suspended = True
                row.suspended_replicas = _wanted(row)
                row.desired_replica_count = 0
                row.update_time = now
                repo.add_event(
                    session, row.pk, now, "SUSPEND", f"was {row.suspended_replicas} replicas"
                )
                changed += 1
        if changed:
            self._changed()
        return changed

    def restore_account(self, account_id: str) -> int:
        """Lift the suspension of the account's deployments; how many changed."""
        changed = 0
        with self._db.transaction() as session:
            now = self._clock.now()
            for row in repo.live_of_account_for_update(session, account_id):
                if not row.suspended:
                    continue
                restored = row.suspended_replicas
                row.suspended = False
                row.suspended_replicas = None
                row.desired_replica_count = restored if restored is not None else _wanted(row)
                row.update_time = now
                repo.add_event(session, row.pk, now, "RESTORE", f"{restored} replicas")
                changed += 1
        if changed:
            self._changed()
        return changed

    def purge_expired(self) -> int:
        """Remove deleted deployments past their ``purgeTime`` (already ``DELETED``); how many."""
        with self._db.transaction() as session:
            rows = repo.expired(session, self._clock.now())
            return sum(repo.purge(session, row.pk) for row in rows)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _wanted(row: DeploymentRow) -> int:
    """The replica count the deployment wants now, suspension aside."""
    if row.fixed_replicas is not None:
        return row.fixed_replicas
    return max(row.desired_replica_count, row.min_replica_count)
