"""The model catalog's operations: create, read, change, delete, load files, resolve.

Access rules live in ``access``, per-kind field rules in ``rules``, the
in-memory name index in ``index``; this module runs them in one
transaction per call and rebuilds the index after every write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.accounts.ids import validate_id
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission, Plan
from firebox.catalog import access, rules
from firebox.catalog import deployed_repository as deployed_repo
from firebox.catalog import repository as repo
from firebox.catalog.deployed_service import DeployedModelService
from firebox.catalog.index import (
    CatalogSnapshot,
    ModelIndex,
    ResolvedModel,
    build_entries,
    resolve_row,
)
from firebox.catalog.kinds import ModelKind, model_name, split_name
from firebox.catalog.models import ModelRow
from firebox.catalog.schemas import Model, ModelCreate, ModelList, ModelSpec, PeftDetailsSpec
from firebox.clock import Clock
from firebox.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from firebox.paging import decode_token, next_token, page_size
from firebox.store.database import Database

# Columns a catalog file may change on an existing model.
_UPSERT_COLUMNS = tuple(
    column.key
    for column in ModelRow.__table__.columns
    if column.key not in ("pk", "account_id", "model_id", "create_time", "update_time")
)


class CatalogService:
    """Creates, reads, changes and resolves models."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        refresh_s: float = 5.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._clock = clock
        self._index = ModelIndex(self._load_index, refresh_s, timer)
        self.deployed_models = DeployedModelService(db, clock, self._index.rebuild)
        # Called with (account, model) after a model is deleted (its uploaded files go).
        self.deleted_listeners: list[Callable[[str, str], None]] = []

    # -- the hot path ----------------------------------------------------------

    def resolve(self, principal_account_id: str, name: str) -> ResolvedModel:
        """The model ``name`` as members of ``principal_account_id`` may use it.

        ``name`` is ``accounts/{a}/models/{m}``, or a bare ``m`` for
        ``accounts/firebox/models/m``. Answers from memory (see ``index``);
        a missing model and one the account may not see are the same 404.
        """
        parts = split_name(name)
        entry = self._index.get(model_name(*parts)) if parts else None
        if entry is None or not entry.visible_to(principal_account_id, PLATFORM_ACCOUNT):
            raise access.model_not_found(name)
        return entry

    def addon_deployed(self, principal_account_id: str, name: str) -> bool:
        """Whether the add-on ``name`` (a full name) is loaded for members of the account.

        It is when it is loaded in their account, or in the platform account
        (where the operator loads public add-ons for everyone). From memory.
        """
        return self._index.is_deployed(principal_account_id, name) or self._index.is_deployed(
            PLATFORM_ACCOUNT, name
        )

    def visible_models(self, principal_account_id: str) -> list[ResolvedModel]:
        """Every model members of ``principal_account_id`` may call (``GET /v1/models``)."""
        return [
            m for m in self._index.all() if m.visible_to(principal_account_id, PLATFORM_ACCOUNT)
        ]

    def refresh(self) -> None:
        """Reload the in-memory index from the database now."""
        self._index.rebuild()

    def _load_index(self) -> CatalogSnapshot:
        with self._db.transaction() as session:
            return CatalogSnapshot(
                models=build_entries(list(repo.all_models(session))),
                deployed=deployed_repo.serving_pairs(session),
            )

    # -- control plane ---------------------------------------------------------

    def create(
        self, principal: Principal, account_id: str, model_id: str | None, body: ModelCreate
    ) -> Model:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        model_id = self._model_id(model_id, body.model_id)
        if body.cluster:
            raise InvalidArgument(
                "BYOC clusters are not supported; omit cluster.",
                code="unsupported_parameter",
                param="cluster",
            )
        spec = body.model
        kind = spec.kind or ModelKind.LORA_ADDON
        if kind is not ModelKind.TEXT_BASE:
            access.authorize_write(principal, kind, spec.given())
        try:
            with self._db.transaction() as session:
                account = accounts_repo.get_account(session, account_id)
                if account is None:
                    raise NotFound(
                        f"Account {account_id!r} was not found.", code="account_not_found"
                    )
                access.authorize_write(principal, kind, spec.given(), Plan(account.plan))
                if repo.get_model(session, account_id, model_id) is not None:
                    raise AlreadyExists(
                        f"Model {model_name(account_id, model_id)!r} already exists."
                    )
                row, base = self._build(session, account_id, model_id, kind, spec)
                session.add(row)
                session.flush()
                view = self._view(row, base, principal)
        except IntegrityError:
            raise AlreadyExists(
                f"Model {model_name(account_id, model_id)!r} already exists."
            ) from None
        self._index.rebuild()
        return view

    def get(self, principal: Principal, account_id: str, model_id: str) -> Model:
        with self._db.transaction() as session:
            row = access.readable(session, principal, account_id, model_id)
            return self._view(row, self._base_of(session, row), principal)

    def list(
        self, principal: Principal, account_id: str, size: int | None, token: str | None
    ) -> ModelList:
        """An account's models; for outsiders, the platform account's public ones."""
        limit = page_size(size)
        after = decode_token(token)
        public_only = not principal.is_operator and principal.account_id != account_id
        if not (public_only and account_id == PLATFORM_ACCOUNT):
            principal.require(account_id, Permission.RESOURCES_READ)
        with self._db.transaction() as session:
            if accounts_repo.get_account(session, account_id) is None:
                raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")
            rows = repo.list_models(
                session, account_id, public_only=public_only, after=after, limit=limit
            )
            bases = repo.bases_of(session, rows)
            models = [
                self._view(row, bases.get(row.base_model_pk or -1), principal) for row in rows
            ]
            return ModelList(
                models=models,
                next_page_token=next_token([r.model_id for r in rows], limit),
                total_size=repo.count_models(session, account_id, public_only=public_only),
            )

    def update(
        self, principal: Principal, account_id: str, model_id: str, spec: ModelSpec
    ) -> Model:
        fields = spec.given()
        with self._db.transaction() as session:
            row = access.writable(session, principal, account_id, model_id)
            kind = ModelKind(row.kind)
            if spec.kind is not None and spec.kind is not kind:
                raise InvalidArgument(
                    f"A model's kind cannot change ({kind.value}); create a new model instead.",
                    code="kind_immutable",
                    param="kind",
                )
            access.authorize_write(principal, kind, fields, _plan(session, account_id))
            rules.check_kind_fields(kind, spec, fields)
            rules.check_required(kind, spec, creating=False)
            rules.apply_spec(row, spec, fields)
            base = (
                self._attach_base(session, row, spec.peft_details)
                if spec.peft_details is not None
                else self._base_of(session, row)
            )
            if row.state == rules.UPLOADING and not row.upload_files:
                row.state = rules.initial_state(row)  # bound meanwhile, no files to check
            rules.check_public(row)
            rules.check_price(row)
            row.update_time = self._clock.now()
            session.flush()
            view = self._view(row, base, principal)
        self._index.rebuild()
        return view

    def delete(self, principal: Principal, account_id: str, model_id: str) -> None:
        """Delete a model; a base model that add-ons still use is refused, naming them."""
        name = model_name(account_id, model_id)
        try:
            with self._db.transaction() as session:
                row = access.writable(session, principal, account_id, model_id)
                access.authorize_write(
                    principal, ModelKind(row.kind), set(), _plan(session, account_id)
                )
                addons = repo.addons_of(session, row.pk)
                if addons:
                    raise self._in_use(name, addons)
                loaded = deployed_repo.names_of_model(session, row.pk)
                if loaded:
                    raise self._loaded(name, loaded)
                session.delete(row)
        except IntegrityError:  # an add-on appeared meanwhile
            with self._db.transaction() as session:
                row_now = repo.get_model(session, account_id, model_id)
                addons = repo.addons_of(session, row_now.pk) if row_now else []
            raise self._in_use(name, addons) from None
        self._index.rebuild()
        for listener in self.deleted_listeners:
            listener(account_id, model_id)

    # -- catalog files ---------------------------------------------------------

    def upsert_platform_model(self, model_id: str, spec: ModelSpec) -> bool:
        """Create or overwrite a model of the platform account; True if anything changed.

        The entry describes the model completely: fields it leaves out go back
        to their defaults. An unchanged entry writes nothing, so loading the
        same file at every start is free.
        """
        validate_id(model_id, "model", "id")
        kind = spec.kind or ModelKind.LORA_ADDON
        with self._db.transaction() as session:
            if accounts_repo.get_account(session, PLATFORM_ACCOUNT) is None:
                raise NotFound(f"Account {PLATFORM_ACCOUNT!r} was not found.")
            fresh, _ = self._build(session, PLATFORM_ACCOUNT, model_id, kind, spec)
            existing = repo.get_model(session, PLATFORM_ACCOUNT, model_id)
            if existing is None:
                session.add(fresh)
                changed = True
            else:
                if existing.kind != fresh.kind:
                    raise FailedPrecondition(
                        f"{model_name(PLATFORM_ACCOUNT, model_id)} exists with kind "
                        f"{existing.kind}; delete it before listing it as {fresh.kind}.",
                        code="kind_immutable",
                    )
                changed = False
                for key in _UPSERT_COLUMNS:
                    if getattr(existing, key) != getattr(fresh, key):
                        setattr(existing, key, getattr(fresh, key))
                        changed = True
                if changed:
                    existing.update_time = self._clock.now()
        if changed:
            self._index.rebuild()
        return changed

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _model_id(from_query: str | None, from_body: str | None) -> str:
        if from_query and from_body and from_query != from_body:
            raise InvalidArgument(
                f"modelId is {from_query!r} in the query but {from_body!r} in the body; "
                "give it once.",
                param="modelId",
            )
        model_id = from_query or from_body
        if not model_id:
            raise InvalidArgument(
                "Missing required field 'modelId' (the new model's id).",
                code="missing_field",
                param="modelId",
            )
        return validate_id(model_id, "model", "modelId")

    def _build(
        self, session: Session, account_id: str, model_id: str, kind: ModelKind, spec: ModelSpec
    ) -> tuple[ModelRow, ModelRow | None]:
        """A new, validated row for ``spec`` (not yet added) and its base model."""
        fields = spec.given()
        rules.check_kind_fields(kind, spec, fields)
        rules.check_required(kind, spec, creating=True)
        row = rules.new_row(account_id, model_id, kind, self._clock.now())
        rules.apply_spec(row, spec, fields)
        base = None
        if spec.peft_details is not None:
            base = self._attach_base(session, row, spec.peft_details)
        row.state = rules.initial_state(row)
        rules.check_public(row)
        rules.check_price(row)
        return row, base

    def _attach_base(self, session: Session, row: ModelRow, peft: PeftDetailsSpec) -> ModelRow:
        """Point add-on ``row`` at the text base model its peftDetails name."""
        parts = split_name(peft.base_model)
        base = repo.get_model(session, *parts) if parts else None
        if base is None or not access.visible_in(base, row.account_id):
            raise InvalidArgument(
                f"Base model {peft.base_model!r} was not found in {row.account_id!r} or among "
                f"the public models (GET /v1/accounts/{PLATFORM_ACCOUNT}/models).",
                code="base_model_not_found",
                param="peftDetails.baseModel",
            )
        if base.kind != ModelKind.TEXT_BASE:
            raise InvalidArgument(
                f"Base model {peft.base_model!r} is a {base.kind}; a LoRA add-on needs a text "
                "base model (HF_BASE_MODEL).",
                code="invalid_base_model",
                param="peftDetails.baseModel",
            )
        row.base_model_pk = base.pk
        return base

    @staticmethod
    def _base_of(session: Session, row: ModelRow) -> ModelRow | None:
        if row.base_model_pk is None:
            return None
        return repo.get_model_by_pk(session, row.base_model_pk)

    @staticmethod
    def _view(row: ModelRow, base: ModelRow | None, principal: Principal) -> Model:
        return Model.of(row, resolve_row(row, base), show_engine=principal.is_operator)

    @staticmethod
    def _loaded(name: str, deployed: Sequence[str]) -> FailedPrecondition:
        return FailedPrecondition(
            f"{name} is loaded for serving as {', '.join(deployed)}. Unload it first "
            "(DELETE /v1/accounts/<account>/deployedModels/<id>).",
            code="model_is_deployed",
        )

    @staticmethod
    def _in_use(name: str, addons: Sequence[str]) -> FailedPrecondition:
        return FailedPrecondition(
            f"{name} is the base model of {len(addons)} LoRA add-on(s): {', '.join(addons)}. "
            "Delete those add-ons first.",
            code="model_has_addons",
        )


def _plan(session: Session, account_id: str) -> Plan | None:
    account = accounts_repo.get_account(session, account_id)
    return Plan(account.plan) if account is not None else None
