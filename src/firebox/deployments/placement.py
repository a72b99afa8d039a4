"""Add-ons placed on deployments: the runtime's reads and writes of ``deployed_models``.

The deployments' own rows are read and written through the slice's
``DeploymentControl`` (``control.py``); this is the placement side:
which LoRA add-ons a deployment serves (``deployedModels`` rows whose
``deployment`` is set) and their ``DEPLOYING -> DEPLOYED`` step once the
deployment runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from firebox.catalog.deployed_models import DeployedModelRow, DeployedState
from firebox.catalog.models import ModelRow
from firebox.deployments import repository as repo
from firebox.deployments.models import deployment_name
from firebox.errors import FailedPrecondition, InvalidArgument, NotFound
from firebox.store.database import Database


@dataclass(frozen=True, slots=True)
class Placed:
    """A LoRA add-on loaded onto a deployment (a ``deployedModels`` row with a deployment)."""

    deployed_model_id: str
    account_id: str
    addon: str  # accounts/{a}/models/{m}
    state: str


class PlacementStore:
    """The controller's access to placed add-ons."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def placed(self) -> dict[str, list[Placed]]:
        """The add-ons placed on deployments, by deployment name."""
        placed: dict[str, list[Placed]] = {}
        with self._db.transaction() as session:
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
        return placed

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


class PlacementRules:
    """``catalog.deployed_service.Placements``: may this add-on go onto that deployment?"""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed

    def check(self, session: Session, account_id: str, deployment: str, base_model: str) -> str:
        """The deployment's full name, if it is the account's, live, takes add-ons of this base."""
        short = deployment.rpartition("/deployments/")[2] if "/" in deployment else deployment
        owner = deployment.split("/")[1] if deployment.startswith("accounts/") else account_id
        row = repo.get(session, owner, short) if owner == account_id else None
        if row is None or row.delete_time is not None:
            raise NotFound(
                f"Deployment {deployment!r} was not found in account {account_id!r}. List "
                f"them with GET /v1/accounts/{account_id}/deployments.",
                code="deployment_not_found",
                param="deployment",
            )
        name = deployment_name(row.account_id, row.deployment_id)
        if not row.enable_addons:
            raise FailedPrecondition(
                f"Deployment {name} does not take add-ons; update it with enableAddons: true "
                "first.",
                code="addons_not_enabled",
                param="deployment",
            )
        if row.base_model != base_model:
            raise InvalidArgument(
                f"The add-on's base model is {base_model}, but {name} serves {row.base_model}; "
                "load it onto a deployment of its base.",
                code="base_model_mismatch",
                param="deployment",
            )
        return name

    def changed(self) -> None:
        self._changed()
