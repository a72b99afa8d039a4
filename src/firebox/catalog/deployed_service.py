"""Loading LoRA add-ons for serving, and unloading them: the ``deployedModels`` resource.

A LoRA add-on is served only while it is loaded (deployed) in the caller's
account, or in the platform account, where a public add-on loaded by the
operator serves every account. The inference gateway checks that against
the catalog index (``ModelIndex.is_deployed``), in memory.

Loading writes the deployed model in state DEPLOYING (the unique
constraints make a second load of the same add-on a 409 before any engine
hears of it), tells the engine serving the add-on's base (``AdapterHooks``),
then marks it DEPLOYED and rebuilds the index. If the engine refuses, the
row goes and its error (a 502 from an upstream) is the answer. Unloading
mirrors it: UNDEPLOYING (no longer served), the engine is told when no other
account still has the add-on loaded, then the row goes; if the engine
refuses, the deployed model is back as it was.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from typing import Protocol

from anyio import CancelScope, to_thread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.catalog import access
from firebox.catalog import deployed_repository as deployed_repo
from firebox.catalog import repository as repo
from firebox.catalog.deployed_models import DeployedModelRow, DeployedState, deployed_name
from firebox.catalog.deployed_schemas import DeployedModel, DeployedModelList, DeployedModelSpec
from firebox.catalog.index import ResolvedModel, resolve_row
from firebox.catalog.kinds import ModelKind, model_name, split_name
from firebox.catalog.models import ModelRow
from firebox.clock import Clock
from firebox.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from firebox.paging import decode_token, next_token, page_size
from firebox.store.database import Database

_SUFFIX = string.ascii_lowercase + string.digits


class AdapterHooks(Protocol):
    """What serving does when an add-on is loaded or unloaded (the inference ``EngineRouter``)."""

    async def load_adapter(self, addon: ResolvedModel) -> None: ...

    async def unload_adapter(self, addon: ResolvedModel) -> None: ...


class QuotaClaims(Protocol):
    """The limits slice's quota enforcement, called inside our transaction.

    ``claim`` locks the account's quota row, so two concurrent loads cannot
    both take the last free unit; it raises ``quota_exceeded`` when none is left.
    """

    def claim(self, session: Session, account_id: str, quota_id: str, amount: int = 1) -> None: ...

    def release(
        self, session: Session, account_id: str, quota_id: str, amount: int = 1
    ) -> None: ...


class Placements(Protocol):
    """The deployments slice's rules for loading an add-on onto a deployment.

    ``check`` runs in our transaction and returns the deployment's full name,
    or raises (a 404 for a deployment not in the account, a 400 when it does
    not take add-ons or serves another base); ``changed`` is called after a
    placement was written or removed, so the runtime reconciles at once.
    """

    def check(self, session: Session, account_id: str, deployment: str, base_model: str) -> str: ...

    def changed(self) -> None: ...


DEPLOYED_MODELS_QUOTA = "deployed-models"


class DeployedModelService:
    """Loads, lists, changes and unloads the LoRA add-ons of an account."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        rebuild_index: Callable[[], None],
        quotas: QuotaClaims | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._rebuild_index = rebuild_index
        self.quotas = quotas  # set by services.py once the limits slice exists
        self.placements: Placements | None = None  # set by services.py (deployments slice)

    # -- load and unload -------------------------------------------------------

    async def load(
        self,
        principal: Principal,
        account_id: str,
        spec: DeployedModelSpec,
        hooks: AdapterHooks,
        *,
        replace_merged_addon: bool = False,
    ) -> DeployedModel:
        """Load the add-on ``spec.model`` for serving in ``account_id``."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        _refuse_deployment(
            spec.deployment if self.placements is None else None, replace_merged_addon
        )
        pk, addon = await to_thread.run_sync(self._insert, account_id, spec)
        if spec.deployment:  # served by the deployment's replicas: the runtime marks it DEPLOYED
            assert self.placements is not None
            self.placements.changed()
            return await to_thread.run_sync(self._view_of, pk)
        try:
            await hooks.load_adapter(addon)
        except BaseException:
            with CancelScope(shield=True):
                await to_thread.run_sync(self._forget, pk)
            raise
        return await to_thread.run_sync(self._set_state, pk, DeployedState.DEPLOYED)

    async def unload(
        self, principal: Principal, account_id: str, deployed_model_id: str, hooks: AdapterHooks
    ) -> None:
        """Stop serving a deployed model, then delete it."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        pk, addon, last, before = await to_thread.run_sync(
            self._begin_unload, account_id, deployed_model_id
        )
        placed = before is DeployedState.DEPLOYED and self._placed(pk)
        if placed:
            last = False  # the deployment's replicas drop it; no serverless engine holds it
        if last:
            try:
                await hooks.unload_adapter(addon)
            except BaseException:
                with CancelScope(shield=True):
                    await to_thread.run_sync(self._set_state, pk, before)
                raise
        if not await to_thread.run_sync(self._forget, pk):
            raise _deployed_not_found(account_id, deployed_model_id)  # unloaded meanwhile
        if self.placements is not None:
            self.placements.changed()

    # -- read and change -------------------------------------------------------

    def get(self, principal: Principal, account_id: str, deployed_model_id: str) -> DeployedModel:
        principal.require(account_id, Permission.RESOURCES_READ)
        with self._db.transaction() as session:
            row = self._found(session, account_id, deployed_model_id)
            return _view(row, self._addon_row(session, row))

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> DeployedModelList:
        principal.require(account_id, Permission.RESOURCES_READ)
        limit = page_size(size)
        after = decode_token(token)
        with self._db.transaction() as session:
            _require_account(session, account_id)
            rows = deployed_repo.list_page(session, account_id, after=after, limit=limit)
            return DeployedModelList(
                deployed_models=[_view(row, self._addon_row(session, row)) for row in rows],
                next_page_token=next_token([r.deployed_model_id for r in rows], limit),
                total_size=deployed_repo.count(session, account_id),
            )

    def update(
        self,
        principal: Principal,
        account_id: str,
        deployed_model_id: str,
        spec: DeployedModelSpec,
    ) -> DeployedModel:
        """Change the display name or description; what is loaded (and where) cannot change."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        fields = spec.model_fields_set
        with self._db.transaction() as session:
            row = self._found(session, account_id, deployed_model_id, lock=True)
            addon = self._addon_row(session, row)
            current = model_name(addon.account_id, addon.model_id)
            if spec.model is not None:
                parts = split_name(spec.model)
                if parts is None or model_name(*parts) != current:
                    raise InvalidArgument(
                        f"{deployed_name(account_id, deployed_model_id)} loads {current}; "
                        "what a deployed model loads cannot change. Unload it and load "
                        "the other add-on.",
                        code="model_immutable",
                        param="model",
                    )
            _check_public(spec.public, account_id, addon)
            placed_on = (row.deployment or "").rpartition("/")[2]
            if spec.deployment is not None and spec.deployment.rpartition("/")[2] != placed_on:
                raise InvalidArgument(
                    "Where a deployed model is served cannot change; unload it and load "
                    "it onto the other deployment.",
                    code="deployment_immutable",
                    param="deployment",
                )
            if "display_name" in fields:
                row.display_name = spec.display_name or addon.display_name
            if "description" in fields:
                row.description = spec.description or ""
            row.update_time = self._clock.now()
            session.flush()
            return _view(row, addon)

    # -- catalog files ---------------------------------------------------------

    def set_platform_deployed(self, model_id: str, deployed: bool) -> bool:
        """Load (or unload) the platform add-on ``model_id`` in the platform account.

        For catalog files (``deployed = true``); idempotent, and the engine is
        not told: an upstream serving it has it from its own start
        (``--lora-modules``). True if anything changed.
        """
        with self._db.transaction() as session:
            addon = repo.get_model(session, PLATFORM_ACCOUNT, model_id)
            if addon is None:
                raise access.model_not_found(model_name(PLATFORM_ACCOUNT, model_id))
            if deployed:
                self._servable(session, addon)
            row = deployed_repo.of_model(session, PLATFORM_ACCOUNT, addon.pk)
            now = self._clock.now()
            if deployed and row is None:
                if self.quotas is not None:  # held units equal usage, whoever loads it
                    self.quotas.claim(session, PLATFORM_ACCOUNT, DEPLOYED_MODELS_QUOTA)
                new = self._new_row(session, PLATFORM_ACCOUNT, addon, DeployedModelSpec())
                new.state = DeployedState.DEPLOYED.value
                session.add(new)
            elif deployed and row is not None and row.state != DeployedState.DEPLOYED:
                row.state = DeployedState.DEPLOYED.value
                row.update_time = now
            elif not deployed and row is not None:
                removed = deployed_repo.remove(session, row.pk)
                if removed and self.quotas is not None:
                    self.quotas.release(session, PLATFORM_ACCOUNT, DEPLOYED_MODELS_QUOTA)
            else:
                return False
        self._rebuild_index()
        return True

    # -- steps, each one transaction -------------------------------------------

    def _insert(self, account_id: str, spec: DeployedModelSpec) -> tuple[int, ResolvedModel]:
        """Check a load and write its deployed model, DEPLOYING; its pk and the add-on."""
        if not spec.model:
            raise InvalidArgument(
                "Missing required field 'model': the LoRA add-on to load, as "
                "accounts/<account>/models/<model>.",
                code="missing_field",
                param="model",
            )
        name = spec.model
        try:
            with self._db.transaction() as session:
                _require_account(session, account_id)
                parts = split_name(name)
                addon = repo.get_model(session, *parts) if parts else None
                if addon is None or not access.visible_in(addon, account_id):
                    raise access.model_not_found(name)
                resolved = self._servable(session, addon)
                existing = deployed_repo.of_model(session, account_id, addon.pk)
                if existing is not None:
                    raise _already_loaded(resolved.name, existing)
                _check_public(spec.public, account_id, addon)
                deployment = None
                if spec.deployment:
                    assert self.placements is not None and resolved.base_model is not None
                    deployment = self.placements.check(
                        session, account_id, spec.deployment, resolved.base_model
                    )
                if self.quotas is not None:
                    self.quotas.claim(session, account_id, DEPLOYED_MODELS_QUOTA)
                row = self._new_row(session, account_id, addon, spec)
                row.deployment = deployment
                session.add(row)
                session.flush()
                pk = row.pk
        except IntegrityError:  # the same add-on, loaded meanwhile by another request
            raise AlreadyExists(
                f"{name!r} is already loaded in {account_id!r}; list the account's "
                "deployedModels to find it.",
                code="already_deployed",
            ) from None
        return pk, resolved

    def _begin_unload(
        self, account_id: str, deployed_model_id: str
    ) -> tuple[int, ResolvedModel, bool, DeployedState]:
        """Mark a deployed model UNDEPLOYING (no longer served).

        Returns its pk, its add-on, whether no other deployment of the add-on
        remains (then the engine may drop it), and the state to restore if
        the engine refuses.
        """
        with self._db.transaction() as session:
            row = self._found(session, account_id, deployed_model_id, lock=True)
            addon = self._addon_row(session, row)
            before = DeployedState(row.state)
            if before is DeployedState.UNDEPLOYING:
                before = DeployedState.DEPLOYED  # an unload that failed half-way: finish it
            row.state = DeployedState.UNDEPLOYING.value
            row.update_time = self._clock.now()
            last = deployed_repo.others_of_model(session, addon.pk, but=row.pk) == 0
            pk = row.pk
            resolved = resolve_row(addon, self._base_of(session, addon))
        self._rebuild_index()
        return pk, resolved, last, before

    def _placed(self, pk: int) -> bool:
        with self._db.transaction() as session:
            row = deployed_repo.get_by_pk(session, pk)
            return row is not None and row.deployment is not None

    def _view_of(self, pk: int) -> DeployedModel:
        with self._db.transaction() as session:
            row = deployed_repo.get_by_pk(session, pk)
            if row is None:  # unloaded meanwhile
                raise NotFound("The deployed model was unloaded meanwhile.", code="not_found")
            return _view(row, self._addon_row(session, row))

    def _set_state(self, pk: int, state: DeployedState) -> DeployedModel:
        with self._db.transaction() as session:
            row = deployed_repo.get_by_pk(session, pk)
            if row is None:  # unloaded meanwhile
                raise NotFound("The deployed model was unloaded meanwhile.", code="not_found")
            row.state = state.value
            row.update_time = self._clock.now()
            view = _view(row, self._addon_row(session, row))
        self._rebuild_index()
        return view

    def _forget(self, pk: int) -> bool:
        """Delete the deployed model and release its quota unit; False if already gone.

        The unit is released only by the transaction whose ``DELETE`` removed
        the row (the quota invariant: usage equals the units held), so
        concurrent unloads of one deployed model release it once.
        """
        with self._db.transaction() as session:
            row = deployed_repo.get_by_pk(session, pk)
            account_id = row.account_id if row is not None else None
            removed = deployed_repo.remove(session, pk)
            if removed and account_id is not None and self.quotas is not None:
                self.quotas.release(session, account_id, DEPLOYED_MODELS_QUOTA)
        self._rebuild_index()
        return removed

    # -- helpers ---------------------------------------------------------------

    def _servable(self, session: Session, addon: ModelRow) -> ResolvedModel:
        """The resolved add-on, if it is one whose base has an engine."""
        name = model_name(addon.account_id, addon.model_id)
        if addon.kind != ModelKind.LORA_ADDON:
            raise InvalidArgument(
                f"{name} is a {addon.kind} model; only LoRA add-ons (HF_PEFT_ADDON) are "
                "loaded with deployedModels. Call a base model by its name.",
                code="not_a_lora_addon",
                param="model",
            )
        resolved = resolve_row(addon, self._base_of(session, addon))
        if resolved.engine is None:
            raise FailedPrecondition(
                f"The base model of {name} ({resolved.base_model}) has no engine bound, so "
                "the add-on cannot be served; the operator sets one in the catalog.",
                code="model_not_served",
                param="model",
            )
        return resolved

    def _new_row(
        self, session: Session, account_id: str, addon: ModelRow, spec: DeployedModelSpec
    ) -> DeployedModelRow:
        now = self._clock.now()
        return DeployedModelRow(
            account_id=account_id,
            deployed_model_id=_free_id(session, account_id, addon.model_id),
            model_pk=addon.pk,
            display_name=spec.display_name or addon.display_name,
            description=spec.description or "",
            state=DeployedState.DEPLOYING.value,
            create_time=now,
            update_time=now,
        )

    @staticmethod
    def _found(
        session: Session, account_id: str, deployed_model_id: str, *, lock: bool = False
    ) -> DeployedModelRow:
        """The deployed model or a 404; ``lock`` holds it for a change (see ``get_for_update``)."""
        if lock:
            row = deployed_repo.get_for_update(session, account_id, deployed_model_id)
        else:
            row = deployed_repo.get(session, account_id, deployed_model_id)
        if row is None:
            raise _deployed_not_found(account_id, deployed_model_id)
        return row

    @staticmethod
    def _addon_row(session: Session, row: DeployedModelRow) -> ModelRow:
        addon = repo.get_model_by_pk(session, row.model_pk)
        assert addon is not None  # the foreign key cascades
        return addon

    @staticmethod
    def _base_of(session: Session, addon: ModelRow) -> ModelRow | None:
        if addon.base_model_pk is None:
            return None
        return repo.get_model_by_pk(session, addon.base_model_pk)


def _view(row: DeployedModelRow, addon: ModelRow) -> DeployedModel:
    return DeployedModel.of(
        row,
        model_name(addon.account_id, addon.model_id),
        public=_serves_everyone(row.account_id, addon),
    )


def _serves_everyone(account_id: str, addon: ModelRow) -> bool:
    return account_id == PLATFORM_ACCOUNT and addon.public


def _check_public(public: bool | None, account_id: str, addon: ModelRow) -> None:
    """``public`` is derived: only a public add-on loaded in the platform account is public."""
    if public is None or public == _serves_everyone(account_id, addon):
        return
    raise InvalidArgument(
        f"A deployed model serves the members of its account; only a public add-on "
        f"loaded in the platform account {PLATFORM_ACCOUNT!r} serves every account. "
        f"Omit public (it would be {str(not public).lower()} here).",
        code="public_not_settable",
        param="public",
    )


def _refuse_deployment(deployment: str | None, replace_merged_addon: bool) -> None:
    """Without the deployments slice, add-ons are served serverless only."""
    if replace_merged_addon and not deployment:
        raise InvalidArgument(
            "replaceMergedAddon is not supported: Firebox never merges an add-on into its "
            "base. Omit it.",
            code="replace_merged_addon_not_supported",
            param="replaceMergedAddon",
        )
    if deployment:
        raise InvalidArgument(
            "This process serves LoRA add-ons serverless only. Omit deployment to load the "
            "add-on serverless.",
            code="deployment_not_supported",
            param="deployment",
        )


def _require_account(session: Session, account_id: str) -> None:
    if accounts_repo.get_account(session, account_id) is None:
        raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")


def _deployed_not_found(account_id: str, deployed_model_id: str) -> NotFound:
    return NotFound(
        f"Deployed model {deployed_name(account_id, deployed_model_id)!r} was not "
        f"found. List them with GET /v1/accounts/{account_id}/deployedModels.",
        code="deployed_model_not_found",
    )


def _already_loaded(name: str, existing: DeployedModelRow) -> AlreadyExists:
    return AlreadyExists(
        f"{name} is already loaded in {existing.account_id!r} as "
        f"{deployed_name(existing.account_id, existing.deployed_model_id)}.",
        code="already_deployed",
    )


def _free_id(session: Session, account_id: str, model_id: str) -> str:
    """The add-on's own id, or, if the account already uses it, that id and a random suffix."""
    candidate = model_id
    while deployed_repo.id_taken(session, account_id, candidate):
        suffix = "".join(secrets.choice(_SUFFIX) for _ in range(6))
        candidate = f"{model_id[:56].rstrip('-')}-{suffix}"
    return candidate
