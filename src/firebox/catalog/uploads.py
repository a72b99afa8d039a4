"""Uploading a model's own weights: signed upload URLs, validation, download URLs.

The ``fireworks-ai`` SDK's flow, unmodified: ``models.create`` (the model is
``UPLOADING``), ``models.get_upload_endpoint(filename_to_size=...)`` (signed
``PUT`` URLs, each bound to its file's exact size, served by
``storage/endpoints.py`` and streamed to the blob store), the uploads, then
``models.validate_upload``: the files are checked without executing anything
(``upload_checks``) and the model becomes ``READY`` — a LoRA add-on is then
loaded for serving in its account at once (``deployedModels``, so the quota
applies), a base model is bound to the in-process engine — or stays
``UPLOADING`` with ``status.message`` naming every problem by file.

Files live under ``models/{account}/{model}/{set}/``, where ``set`` hashes the
registered names and sizes: asking again for the same set (fresh URLs for a
slow upload) keeps what arrived, a different set starts a new folder and the
old one goes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from anyio import to_thread
from sqlalchemy import func, select

from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.catalog import access, rules
from firebox.catalog import deployed_repository as deployed_repo
from firebox.catalog import repository as repo
from firebox.catalog.binding import LocalEngine, binding_from_json
from firebox.catalog.deployed_schemas import DeployedModelSpec
from firebox.catalog.deployed_service import AdapterHooks
from firebox.catalog.kinds import ModelKind, model_name
from firebox.catalog.models import ModelRow
from firebox.catalog.price_class import BUCKETS_TEXT, classify
from firebox.catalog.service import CatalogService
from firebox.catalog.upload_checks import (
    Problem,
    UploadProblems,
    check_adapter,
    check_base_model,
)
from firebox.catalog.upload_rules import (
    Pending,
    UploadLimits,
    apply_base,
    check_request,
    check_uploadable,
    files_prefix,
    plan_of,
    set_prefix,
)
from firebox.catalog.upload_schemas import UploadEndpointRequest
from firebox.clock import Clock
from firebox.errors import (
    AlreadyExists,
    FailedPrecondition,
    FireboxError,
    InvalidArgument,
    PayloadTooLarge,
)
from firebox.inference.local.text_config import TextModelConfig, read_text_model_config
from firebox.storage.blobs import BlobStore
from firebox.storage.signed import UrlSigner
from firebox.store.database import Database
from firebox.store.locking import lock_rows


class ModelUploads:
    """Hands out upload and download URLs for models' files and validates what arrived."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        catalog: CatalogService,
        blobs: BlobStore,
        signer: UrlSigner,
        *,
        url_ttl_s: int,
        limits: UploadLimits,
        models_dir: Path | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._catalog = catalog
        self._blobs = blobs
        self._signer = signer
        self._ttl = url_ttl_s
        self.limits = limits
        self._models_dir = models_dir
        # Called with a deleted model's files folder (the engine router forgets its engine).
        self.files_dropped: list[Callable[[Path], None]] = []
        catalog.deleted_listeners.append(self._drop_files)

    # -- upload URLs -----------------------------------------------------------

    def upload_urls(
        self, principal: Principal, account_id: str, model_id: str, body: UploadEndpointRequest
    ) -> dict[str, str]:
        """Signed PUT paths, one per file, each for exactly the declared size."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        files = dict(body.filename_to_size)
        check_request(files, self.limits)
        total = sum(files.values())
        with self._db.transaction() as session:
            lock_rows(session, AccountRow, AccountRow.id == account_id)  # quota check below
            row = access.writable(session, principal, account_id, model_id)
            plan = plan_of(session, account_id)
            kind = ModelKind(row.kind)
            access.authorize_write(principal, kind, set(), plan)
            check_uploadable(row, kind, plan)
            used = session.scalar(
                select(func.coalesce(func.sum(ModelRow.upload_bytes), 0)).where(
                    ModelRow.account_id == account_id, ModelRow.pk != row.pk
                )
            )
            if int(used or 0) + total > self.limits.account_quota_bytes:
                raise PayloadTooLarge(
                    f"These files ({total:,} bytes) would take account {account_id!r} past its "
                    f"storage quota of {self.limits.account_quota_bytes:,} bytes "
                    f"({int(used or 0):,} in use by other models). Delete models you no longer "
                    "need, or ask the operator for more storage.",
                    code="storage_quota_exceeded",
                )
            old = dict(row.upload_files or {})
            row.upload_files = files
            row.upload_bytes = total
            row.status_message = None
            row.update_time = self._clock.now()
        prefix = set_prefix(account_id, model_id, files)
        if old and set_prefix(account_id, model_id, old) != prefix:
            self._blobs.delete_prefix(set_prefix(account_id, model_id, old))
        return {
            name: self._signer.sign(
                "PUT", f"{prefix}/{name}", account_id, size=size, ttl_s=self._ttl
            )
            for name, size in sorted(files.items())
        }

    # -- validation ------------------------------------------------------------

    async def validate(
        self, principal: Principal, account_id: str, model_id: str, hooks: AdapterHooks
    ) -> list[str]:
        """Check the uploaded files; READY (and an add-on loaded) or a 400 naming each problem."""
        warnings, addon = await to_thread.run_sync(self._validate, principal, account_id, model_id)
        if addon is not None:
            warnings += await self._load(principal, account_id, addon, hooks)
        return warnings

    def _validate(
        self, principal: Principal, account_id: str, model_id: str
    ) -> tuple[list[str], str | None]:
        principal.require(account_id, Permission.RESOURCES_WRITE)
        pending = self._pending(principal, account_id, model_id)
        if pending is None:
            return [], None  # already READY: nothing to do
        try:
            folder, updates, warnings = self._check(pending)
        except UploadProblems as exc:
            message = "\n".join(f"- {p}" for p in exc.problems)
            self._record(account_id, model_id, pending, status_message=message)
            raise InvalidArgument(
                f"The files of {pending.name} cannot be served:\n{message}\n"
                "Fix them, upload again (:getUploadEndpoint) and validate again.",
                code="invalid_upload",
            ) from None
        self._record(account_id, model_id, pending, folder=folder, updates=updates)
        self._catalog.refresh()
        return warnings, pending.name if pending.kind is ModelKind.LORA_ADDON else None

    def _pending(self, principal: Principal, account_id: str, model_id: str) -> Pending | None:
        with self._db.transaction() as session:
            row = access.writable(session, principal, account_id, model_id)
            plan = plan_of(session, account_id)
            kind = ModelKind(row.kind)
            access.authorize_write(principal, kind, set(), plan)
            if row.state == rules.READY and row.upload_files:
                return None
            check_uploadable(row, kind, plan)
            if not row.upload_files:
                raise FailedPrecondition(
                    f"{model_name(account_id, model_id)} has no files yet: call "
                    ":getUploadEndpoint with every file and its size, upload them, then validate.",
                    code="no_files_uploaded",
                )
            base = repo.get_model_by_pk(session, row.base_model_pk) if row.base_model_pk else None
            base_engine = binding_from_json(base.engine) if base is not None else None
            own_engine = binding_from_json(row.engine)
            return Pending(
                name=model_name(account_id, model_id),
                kind=kind,
                files=dict(row.upload_files),
                prefix=set_prefix(account_id, model_id, dict(row.upload_files)),
                declared_rank=row.lora_rank,
                declared_targets=tuple(row.target_modules or ()),
                base_path=base_engine.path if isinstance(base_engine, LocalEngine) else None,
                upstream_bound=own_engine is not None and not isinstance(own_engine, LocalEngine),
                price_set=row.price_micro_usd is not None,
                unserved_base=(
                    model_name(base.account_id, base.model_id)
                    if base is not None and base_engine is None
                    else None
                ),
            )

    def _check(self, pending: Pending) -> tuple[Path, dict[str, object], list[str]]:
        problems = []
        for name, size in sorted(pending.files.items()):
            stored = self._blobs.size(f"{pending.prefix}/{name}")
            if stored is None:
                problems.append(Problem(name, "not uploaded yet: PUT it to its upload URL"))
            elif stored != size:
                problems.append(Problem(name, f"{stored} bytes stored, {size} declared"))
        if problems:
            raise UploadProblems(problems)
        first = sorted(pending.files)[0]
        folder = self._blobs.local_path(f"{pending.prefix}/{first}").parent
        if pending.kind is ModelKind.LORA_ADDON:
            if pending.unserved_base is not None:
                raise UploadProblems(
                    [
                        Problem(
                            "adapter_config.json",
                            f"the base model {pending.unserved_base} is not served yet (is it "
                            "still UPLOADING?); validate the base model first, then this add-on",
                        )
                    ]
                )
            facts = check_adapter(
                folder,
                pending.files,
                declared_rank=pending.declared_rank,
                declared_targets=pending.declared_targets,
                max_rank=self.limits.max_lora_rank,
                base=self._base_config(pending.base_path),
            )
            return folder, {}, facts.warnings
        base = check_base_model(folder, pending.files, upstream_bound=pending.upstream_bound)
        price_class = classify(ModelKind.TEXT_BASE, base.parameter_count, base.moe, None)
        if not pending.price_set and price_class is None:
            kind = "mixture-of-experts" if base.moe else "dense"
            raise UploadProblems(
                [
                    Problem(
                        "model.safetensors",
                        f"a {kind} model of {base.parameter_count:,} parameters fits no price "
                        f"class ({BUCKETS_TEXT}); the operator must set its price "
                        '(PATCH {"price": "..."}) before it can be served',
                    )
                ]
            )
        updates: dict[str, object] = {
            "parameter_count": base.parameter_count,
            "moe": base.moe,
            "model_type": base.model_type or None,
            "context_length": base.context_length,
        }
        return folder, updates, base.warnings

    def _base_config(self, path: str | None) -> TextModelConfig | None:
        if path is None:
            return None
        folder = Path(path).expanduser()
        if not folder.is_absolute() and self._models_dir is not None:
            folder = self._models_dir / folder
        try:
            return read_text_model_config(folder)
        except (OSError, ValueError, KeyError):
            return None

    def _record(
        self,
        account_id: str,
        model_id: str,
        pending: Pending,
        *,
        folder: Path | None = None,
        updates: dict[str, object] | None = None,
        status_message: str | None = None,
    ) -> None:
        """Write the verdict, unless the files changed meanwhile (then that upload decides)."""
        with self._db.transaction() as session:
            row = repo.get_model_for_update(session, account_id, model_id)
            if row is None or dict(row.upload_files or {}) != pending.files:
                raise FailedPrecondition(
                    f"The files of {pending.name} changed during validation; validate again.",
                    code="upload_changed",
                )
            row.update_time = self._clock.now()
            if folder is None:
                row.status_message = (status_message or "")[:4000]
                return
            if pending.kind is ModelKind.LORA_ADDON:
                row.adapter_path = str(folder)
            else:
                apply_base(row, folder, updates or {})
            row.state = rules.READY
            row.status_message = None

    async def _load(
        self, principal: Principal, account_id: str, name: str, hooks: AdapterHooks
    ) -> list[str]:
        """Load a freshly validated add-on for serving in its account (SPEC: served at once)."""
        deployed = self._catalog.deployed_models
        loaded = await to_thread.run_sync(self._loaded_in, account_id, name)
        if loaded:
            return []
        try:
            await deployed.load(principal, account_id, DeployedModelSpec(model=name), hooks)
        except AlreadyExists:
            return []  # a concurrent validation loaded it
        except FireboxError as exc:
            return [f"The add-on is READY but was not loaded for serving: {exc.message}"]
        return []

    def _loaded_in(self, account_id: str, name: str) -> bool:
        with self._db.transaction() as session:
            _, _, model_id = name.rpartition("/")
            row = repo.get_model(session, account_id, model_id)
            found = row is not None and deployed_repo.of_model(session, account_id, row.pk)
            return bool(found)

    # -- downloads and deletes -------------------------------------------------

    def download_urls(self, principal: Principal, account_id: str, model_id: str) -> dict[str, str]:
        """Signed GET paths of the uploaded files, for the model's own account."""
        if not principal.is_operator and principal.account_id != account_id:
            raise access.model_not_found(model_name(account_id, model_id))
        with self._db.transaction() as session:
            row = access.readable(session, principal, account_id, model_id)
            files = dict(row.upload_files or {})
        if not files:
            raise FailedPrecondition(
                f"{model_name(account_id, model_id)} has no uploaded files to download.",
                code="no_files_uploaded",
            )
        prefix = set_prefix(account_id, model_id, files)
        return {
            name: self._signer.sign(
                "GET", f"{prefix}/{name}", account_id, size=None, ttl_s=self._ttl
            )
            for name in sorted(files)
            if self._blobs.size(f"{prefix}/{name}") is not None
        }

    def prepare(
        self, principal: Principal, account_id: str, model_id: str, precision: str | None
    ) -> None:
        """The weights are served in their stored precision; only that 'preparation' exists."""
        with self._db.transaction() as session:
            access.writable(session, principal, account_id, model_id)
        if precision not in (None, "", "PRECISION_UNSPECIFIED"):
            raise InvalidArgument(
                f"Precision {precision} is not offered: models are served in the precision "
                "of their uploaded weights. Omit precision.",
                code="unsupported_precision",
                param="precision",
            )

    def _drop_files(self, account_id: str, model_id: str) -> None:
        prefix = files_prefix(account_id, model_id)
        stored = self._blobs.list(prefix)
        if stored:
            # models/{a}/{m}/{set}/{file}: the model's folder is two levels up from a file.
            folder = self._blobs.local_path(stored[0].key).parent.parent
            for listener in self.files_dropped:
                listener(folder)
        self._blobs.delete_prefix(prefix)
