"""The runtime's reads and writes of deployment rows (its own transactions).

What the controller needs of the database: the desired set (the live
deployments with the add-ons placed on them), the deleted deployments still
to be marked ``DELETED``, writing observed state back with the state
changes recorded as events, and the suspension flag the limits hook flips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from firebox.catalog.deployed_models import DeployedModelRow, DeployedState
from firebox.catalog.models import ModelRow
from firebox.deployments import repository as repo
from firebox.deployments.models import DeploymentRow, DeploymentState
from firebox.store.database import Database


@dataclass(frozen=True, slots=True)
class Placed:
    """A LoRA add-on loaded onto a deployment (a ``deployedModels`` row with a deployment)."""

    deployed_model_id: str
    account_id: str
    addon: str  # accounts/{a}/models/{m}
    state: str


@dataclass(frozen=True, slots=True)
class Observed:
    """The observed columns of one deployment, as the controller computed them."""

    state: str
    status_code: str
    status_message: str
    replica_count: int
    desired_replica_count: int
    pending_replicas: int
    initializing_replicas: int
    ready_replicas: int


def _observed_of(row: DeploymentRow) -> Observed:
    return Observed(
        row.state,
        row.status_code,
        row.status_message,
        row.replica_count,
        row.desired_replica_count,
        row.pending_replicas,
        row.initializing_replicas,
        row.ready_replicas,
    )


class RuntimeStore:
    """The controller's access to the deployment tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def live(self) -> tuple[list[DeploymentRow], dict[str, list[Placed]]]:
        """Every live deployment (detached copies) and the add-ons placed on each, by name."""
        with self._db.transaction() as session:
            rows = list(repo.live(session))
            placed: dict[str, list[Placed]] = {}
            query = (
                select(DeployedModelRow, ModelRow)
                .join(ModelRow, ModelRow.pk == DeployedModelRow.model_pk)
                .where(DeployedModelRow.deployment.is_not(None))
            )
            for deployed, model in session.execute(query).all():
                assert deployed.deployment is not None
                placed.setdefault(deployed.deployment, []).append(
                    Placed(
                        deployed.deployed_model_id,
                        deployed.account_id,
                        f"accounts/{model.account_id}/models/{model.model_id}",
                        deployed.state,
                    )
                )
            session.expunge_all()
        return rows, placed

    def deleting(self) -> list[DeploymentRow]:
        """Deleted deployments not yet marked ``DELETED`` (their replicas may still drain)."""
        with self._db.transaction() as session:
            query = select(DeploymentRow).where(
                DeploymentRow.delete_time.is_not(None),
                DeploymentRow.state != DeploymentState.DELETED.value,
            )
            rows = list(session.scalars(query).all())
            session.expunge_all()
        return rows

    def write(
        self, pk: int, observed: Observed, now: datetime, events: Sequence[tuple[str, str]]
    ) -> bool:
        """Write ``observed`` onto the row if it changed; record ``events``. False if gone."""
        with self._db.transaction() as session:
            row = repo.get_by_pk_for_update(session, pk)
            if row is None:
                return False
            if _observed_of(row) != observed:
                row.state = observed.state
                row.status_code = observed.status_code
                row.status_message = observed.status_message[:1000]
                row.replica_count = observed.replica_count
                row.desired_replica_count = observed.desired_replica_count
                row.pending_replicas = observed.pending_replicas
                row.initializing_replicas = observed.initializing_replicas
                row.ready_replicas = observed.ready_replicas
                row.observed_time = now
            for kind, detail in events:
                repo.add_event(session, pk, now, kind, detail)
        return True

    def mark_placed(self, account_id: str, deployed_model_ids: Sequence[str]) -> int:
        """DEPLOYING add-ons placed on a running deployment become DEPLOYED; how many."""
        if not deployed_model_ids:
            return 0
        changed = 0
        with self._db.transaction() as session:
            query = select(DeployedModelRow).where(
                DeployedModelRow.account_id == account_id,
                DeployedModelRow.deployed_model_id.in_(list(deployed_model_ids)),
                DeployedModelRow.state == DeployedState.DEPLOYING.value,
            )
            for row in session.scalars(query).all():
                row.state = DeployedState.DEPLOYED.value
                changed += 1
        return changed

    def set_suspended(self, account_id: str, suspended: bool, now: datetime) -> int:
        """Flip the suspension of the account's live deployments; how many changed.

        Suspending remembers each one's desired count (``suspended_replicas``)
        and runs it at zero; lifting clears both, so autoscaling (or the
        operator's explicit ``:scale``, kept in ``fixed_replicas``) resumes.
        """
        changed = 0
        with self._db.transaction() as session:
            for row in repo.live_of_account_for_update(session, account_id):
                if row.suspended == suspended:
                    continue
                if suspended:
                    row.suspended_replicas = row.desired_replica_count
                    detail = f"account suspended; {row.desired_replica_count} replicas remembered"
                else:
                    detail = f"account active again; {row.suspended_replicas or 0} replicas before"
                    row.suspended_replicas = None
                row.suspended = suspended
                row.update_time = now
                repo.add_event(session, row.pk, now, "SUSPEND" if suspended else "RESUME", detail)
                changed += 1
        return changed
