"""On-demand deployments: create, read, list, change, scale, delete and undelete (SPEC §5, §7).

The service owns the desired state in the database; the runtime (controller
and driver) makes the running world match it and writes observations back
(``runtime.py``). After every committed write the service calls
``on_change`` so the controller reconciles at once instead of at its next
tick.

Quotas (SPEC §5): a live deployment holds ``acceleratorCount x max(
maxReplicaCount, explicit :scale count)`` units of its accelerator's quota
(``a100-gpus``, ``h100-gpus``) and one ``deployed-models`` unit, claimed
through the limits slice inside the same transaction as the row, so two
concurrent creates cannot both take the last unit and a refused claim
leaves nothing behind. The units held are stored on the row
(``quota_id``, ``quota_units``, ``model_units``) and given back exactly as
held on delete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.accounts.ids import validate_id
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.deployments import checks, listing
from firebox.deployments import repository as repo
from firebox.deployments import spec as specs
from firebox.deployments.base_models import BaseModels
from firebox.deployments.models import DeploymentRow, DeploymentState, deployment_name
from firebox.deployments.quota import QuotaClaims, hold, release_all
from firebox.deployments.schemas import Deployment, DeploymentList, DeploymentSpec
from firebox.deployments.shapes import ShapeService
from firebox.deployments.suspension import account_suspended
from firebox.deployments.views import record, view
from firebox.errors import FailedPrecondition
from firebox.paging import encode_token, page_size
from firebox.store.database import Database


@dataclass(frozen=True, slots=True)
class DeploymentSettings:
    bounds: specs.SpecBounds = field(default_factory=specs.SpecBounds)
    retention_s: float = 7 * 86400.0  # a deleted deployment can be undeleted this long


class _ValidateOnly(Exception):  # a rollback signal, not an error
    def __init__(self, answer: Deployment) -> None:
        self.answer = answer


class DeploymentService:
    """The ``deployments`` resource of every account."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        base_models: BaseModels,
        shapes: ShapeService,
        settings: DeploymentSettings | None = None,
        quotas: QuotaClaims | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._models = base_models
        self._shapes = shapes
        self._settings = settings or DeploymentSettings()
        self.quotas = quotas  # set by services.py once the limits slice exists
        self.on_change: Callable[[], None] | None = None  # set by the runtime
        # ``price_check(account_id, accelerator_type)`` raises when the type has no GPU-hour
        # price for the account (set by services.py from billing): a deployment that could
        # not be billed is refused at create or update, not discovered by the meter.
        self.price_check: Callable[[str, str], None] | None = None

    # -- create ----------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        account_id: str,
        body: DeploymentSpec,
        deployment_id: str | None = None,
        *,
        validate_only: bool = False,
    ) -> Deployment:
        """Create a deployment (CREATING); ``validate_only`` checks all and persists nothing."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        wanted = checks.short_id(account_id, deployment_id) if deployment_id else None
        if wanted is not None:
            validate_id(wanted, "deployment", "deploymentId")
        try:
            with self._db.transaction() as session:
                plan = checks.plan(session, account_id, lock=True)
                shape = None
                if body.deployment_shape and body.deployment_shape != "default":
                    shape = self._shapes.resolve(session, account_id, body.deployment_shape)
                spec = specs.for_create(
                    body, shape.snapshot if shape else None, self._settings.bounds
                )
                if shape is not None:
                    spec = specs.replace_shape(spec, shape.name)
                spec = self._models.check(session, account_id, spec)
                checks.check_plan(spec.accelerator_type, plan)
                if self.price_check is not None:
                    self.price_check(account_id, spec.accelerator_type)
                new_id = wanted or checks.free_id(session, account_id)
                self._take_id(session, account_id, new_id)
                now = self._clock.now()
                row = DeploymentRow(
                    account_id=account_id,
                    deployment_id=new_id,
                    revision=1,
                    state=DeploymentState.CREATING.value,
                    status_code="OK",
                    status_message="",
                    suspended=False,
                    replica_count=0,
                    desired_replica_count=spec.min_replica_count,
                    pending_replicas=0,
                    initializing_replicas=0,
                    ready_replicas=0,
                    quota_units=0,
                    model_units=0,
                    create_time=now,
                    update_time=now,
                )
                specs.write_row(row, spec)
                if account_suspended(session, account_id, now):
                    row.suspended = True  # no hook fires for it: it starts at zero
                    row.suspended_replicas = spec.min_replica_count
                    row.desired_replica_count = 0
                hold(self.quotas, session, row, spec)
                session.add(row)
                session.flush()
                repo.add_event(
                    session, row.pk, now, "CREATE", f"revision 1 on {spec.accelerator_type}"
                )
                answer = view(row)
                if validate_only:
                    raise _ValidateOnly(answer)
        except _ValidateOnly as done:
            return done.answer
        except IntegrityError:  # the same id, created meanwhile by another request
            raise checks.exists(account_id, wanted or "") from None
        self._changed()
        return answer

    # -- read ------------------------------------------------------------------

    def get(self, principal: Principal, account_id: str, deployment_id: str) -> Deployment:
        principal.require(account_id, Permission.RESOURCES_READ)
        short = checks.short_id(account_id, deployment_id)
        with self._db.transaction() as session:
            row = self._found(session, account_id, short, deleted_too=True)
            return view(row, repo.events(session, row.pk, limit=20))

    def list(
        self,
        principal: Principal,
        account_id: str,
        *,
        size: int | None = None,
        token: str | None = None,
        filter_: str | None = None,
        order_by: str | None = None,
        show_deleted: bool = False,
    ) -> DeploymentList:
        principal.require(account_id, Permission.RESOURCES_READ)
        limit = page_size(size)
        start = checks.offset(token)
        predicate = listing.parse_filter(filter_)
        keys = listing.parse_order(order_by)
        now = self._clock.now()
        with self._db.transaction() as session:
            checks.plan(session, account_id)
            rows = repo.all_of_account(session, account_id)
            records = [
                record(r)
                for r in rows
                if (r.delete_time is None or show_deleted) and not checks.purged(r, now)
            ]
            matching = listing.order([r for r in records if predicate(r)], keys)
            page = matching[start : start + limit]
            more = start + limit < len(matching)
            return DeploymentList(
                deployments=[view(r["row"]) for r in page],
                next_page_token=encode_token(f"o{start + limit}") if more else "",
                total_size=len(matching),
            )

    # -- change ----------------------------------------------------------------

    def update(
        self,
        principal: Principal,
        account_id: str,
        deployment_id: str,
        body: DeploymentSpec,
        update_mask: str | None = None,
    ) -> Deployment:
        """PATCH: the fields in ``update_mask``, or else the keys present in the body."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        short = checks.short_id(account_id, deployment_id)
        paths = checks.paths(body, update_mask)
        with self._db.transaction() as session:
            plan = checks.plan(session, account_id)
            row = self._found(session, account_id, short, lock=True)
            current = specs.of_row(row)
            if "base_model" in paths and body.base_model:
                self._models.same_base(session, account_id, current.base_model, body.base_model)
            paths.discard("base_model")
            if "deployment_shape" in paths and body.deployment_shape:
                shape = self._shapes.resolve(session, account_id, body.deployment_shape)
                body = body.model_copy(update={"deployment_shape": shape.name})
            new = specs.with_changes(current, body, paths, self._settings.bounds)
            if new == current:
                return view(row)
            checks.check_plan(new.accelerator_type, plan)
            if self.price_check is not None and new.accelerator_type != current.accelerator_type:
                self.price_check(account_id, new.accelerator_type)
            self._models.check_context(session, account_id, new)
            now = self._clock.now()
            autoscaling = {"min_replica_count", "max_replica_count"} | {
                p for p in paths if p.startswith("autoscaling_policy")
            }
            if paths & autoscaling and row.fixed_replicas is not None:
                row.fixed_replicas = None  # a new policy returns it to autoscaling
            specs.write_row(row, new)
            hold(self.quotas, session, row, new)
            if new.runtime_differs(current):
                row.revision += 1
                if row.state in (DeploymentState.READY.value, DeploymentState.FAILED.value):
                    row.state = DeploymentState.UPDATING.value
            row.update_time = now
            changed = ", ".join(sorted(paths))
            repo.add_event(session, row.pk, now, "UPDATE", f"revision {row.revision}: {changed}")
            answer = view(row)
        self._changed()
        return answer

    def scale(
        self, principal: Principal, account_id: str, deployment_id: str, replica_count: int
    ) -> Deployment:
        """Hold ``replica_count`` replicas (an explicit count overrides autoscaling)."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        short = checks.short_id(account_id, deployment_id)
        with self._db.transaction() as session:
            row = self._found(session, account_id, short, lock=True)
            row.fixed_replicas = replica_count
            hold(self.quotas, session, row, specs.of_row(row))
            now = self._clock.now()
            if row.suspended:
                row.suspended_replicas = replica_count  # restored when the suspension lifts
            else:
                row.desired_replica_count = replica_count
            row.update_time = now
            repo.add_event(session, row.pk, now, "SCALE", f"{replica_count} replicas")
            answer = view(row)
        self._changed()
        return answer

    def delete(
        self, principal: Principal, account_id: str, deployment_id: str, *, hard: bool = False
    ) -> None:
        """Soft delete (undeletable until ``purgeTime``), or remove at once with ``hard``."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        short = checks.short_id(account_id, deployment_id)
        with self._db.transaction() as session:
            row = self._found(session, account_id, short, lock=True, deleted_too=hard)
            release_all(self.quotas, session, row)
            now = self._clock.now()
            if hard:
                repo.purge(session, row.pk)
            else:
                row.delete_time = now
                row.purge_time = now + timedelta(seconds=self._settings.retention_s)
                row.state = DeploymentState.DELETING.value
                row.desired_replica_count = 0
                row.update_time = now
                repo.add_event(session, row.pk, now, "DELETE", "")
        self._changed()

    def undelete(self, principal: Principal, account_id: str, deployment_id: str) -> Deployment:
        """Bring back a soft-deleted deployment: its quota is claimed again, then it starts."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        short = checks.short_id(account_id, deployment_id)
        with self._db.transaction() as session:
            plan = checks.plan(session, account_id, lock=True)
            row = self._found(session, account_id, short, lock=True, deleted_too=True)
            if row.delete_time is None:
                raise FailedPrecondition(
                    f"{deployment_name(account_id, short)} is not deleted; nothing to undelete.",
                    code="not_deleted",
                )
            spec = specs.of_row(row)
            checks.check_plan(spec.accelerator_type, plan)
            hold(self.quotas, session, row, spec)
            now = self._clock.now()
            row.delete_time = None
            row.purge_time = None
            row.state = DeploymentState.CREATING.value
            row.status_code, row.status_message = "OK", ""
            row.revision += 1
            wanted = row.fixed_replicas if row.fixed_replicas is not None else row.min_replica_count
            row.suspended = account_suspended(session, account_id, now)  # as the account is now
            row.suspended_replicas = wanted if row.suspended else None
            row.desired_replica_count = 0 if row.suspended else wanted
            row.update_time = now
            repo.add_event(session, row.pk, now, "UNDELETE", f"revision {row.revision}")
            answer = view(row)
        self._changed()
        return answer

    # -- helpers ---------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _found(
        self,
        session: Session,
        account_id: str,
        deployment_id: str,
        *,
        lock: bool = False,
        deleted_too: bool = False,
    ) -> DeploymentRow:
        if lock:
            row = repo.get_for_update(session, account_id, deployment_id)
        else:
            row = repo.get(session, account_id, deployment_id)
        if row is not None and checks.purged(row, self._clock.now()):
            repo.purge(session, row.pk)
            row = None
        if row is None or (row.delete_time is not None and not deleted_too):
            raise checks.not_found(account_id, deployment_id, deleted=row is not None)
        return row

    def _take_id(self, session: Session, account_id: str, deployment_id: str) -> None:
        """Free ``deployment_id`` for a new deployment, or a 409 if a live one has it.

        A deleted deployment with the id is purged: creating anew replaces it.
        """
        existing = repo.get_for_update(session, account_id, deployment_id)
        if existing is None:
            return
        if existing.delete_time is None:
            raise checks.exists(account_id, deployment_id)
        repo.purge(session, existing.pk)
        session.flush()


__all__ = ["DeploymentService", "DeploymentSettings"]
