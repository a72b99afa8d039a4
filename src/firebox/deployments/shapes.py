"""Deployment shapes: operator-defined accelerator type, count and precision for a base model.

A shape belongs to an account; the operator's public shapes live in the
platform account (``accounts/firebox/deploymentShapes/…``) and every account
may read and deploy them, as Fireworks' own live under ``accounts/fireworks``.
Every change of a shape's fields appends a new immutable version; a
deployment created from a shape stores the version's name
(``…/deploymentShapes/s/versions/2``) and takes from its snapshot what the
create body leaves out.

The operator writes shapes through the API (``POST`` a new one, ``PATCH`` a
new version, ``DELETE``;
operator key) or a shapes file (``FIREBOX_DEPLOYMENT_SHAPES_FILE``, TOML
``[[deployment_shapes]]`` tables, loaded at start; see docs/api.md).
``deploymentShapeVersions:match`` answers the latest version of every shape
the account may deploy for a model (a LoRA add-on matches its base's shapes;
``enableAddons`` keeps only shapes that allow add-ons).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.accounts.ids import validate_id
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.deployments import checks
from firebox.deployments import shape_repository as repo
from firebox.deployments.accelerators import ACCELERATOR_TYPES, DEFAULT_TYPE
from firebox.deployments.base_models import BaseModels
from firebox.deployments.models import (
    DeploymentShapeRow,
    DeploymentShapeVersionRow,
    shape_name,
    shape_version_name,
)
from firebox.deployments.schemas import PRECISIONS
from firebox.deployments.shape_files import DEFAULT_SHAPES, ShapesFileError, read_file
from firebox.deployments.shape_schemas import (
    PRESET_TYPES,
    DeploymentShape,
    DeploymentShapeList,
    DeploymentShapeVersion,
    DeploymentShapeVersionList,
    MatchRequest,
    ShapeSpec,
    snapshot_fields,
)
from firebox.errors import AlreadyExists, FireboxError, InvalidArgument, NotFound
from firebox.paging import encode_token, page_size
from firebox.store.database import Database


@dataclass(frozen=True, slots=True)
class ResolvedShape:
    name: str  # the version's full name
    snapshot: dict[str, Any]


class ShapeService:
    """Reads shapes for every account; writes them for the operator."""

    def __init__(self, db: Database, clock: Clock, base_models: BaseModels) -> None:
        self._db = db
        self._clock = clock
        self._models = base_models

    # -- for deployments -------------------------------------------------------

    def resolve(self, session: Session, account_id: str, name: str) -> ResolvedShape:
        """The version ``name`` names (a shape: its latest), as ``account_id`` sees it."""
        owner, shape_id, version = _split(name, account_id)
        shape = repo.get_shape(session, owner, shape_id)
        if shape is None and "/" not in name:
            owner, shape = PLATFORM_ACCOUNT, repo.get_shape(session, PLATFORM_ACCOUNT, shape_id)
        if shape is None or not _visible(shape, account_id):
            raise _shape_not_found(name)
        row = repo.get_version(session, shape.pk, version or shape.latest_version)
        if row is None:
            raise _shape_not_found(name)
        return ResolvedShape(shape_version_name(owner, shape_id, row.version), dict(row.snapshot))

    # -- reads -----------------------------------------------------------------

    def list_shapes(
        self,
        principal: Principal,
        account_id: str,
        size: int | None,
        token: str | None,
        target_model: str | None = None,
    ) -> DeploymentShapeList:
        public_only = _reader(principal, account_id)
        limit = page_size(size)
        with self._db.transaction() as session:
            base = None
            if target_model:
                base = self._base_of(session, principal.account_id, target_model)
            rows = repo.list_shapes(session, account_id, public_only=public_only)
            shapes = []
            for row in rows:
                latest = repo.get_version(session, row.pk, row.latest_version)
                if latest is None or (base is not None and latest.base_model != base):
                    continue
                shapes.append(_shape(row, latest))
            start = checks.offset(token)
            page = shapes[start : start + limit]
            more = start + limit < len(shapes)
            return DeploymentShapeList(
                deployment_shapes=page,
                next_page_token=encode_token(f"o{start + limit}") if more else "",
                total_size=len(shapes),
            )

    def get_shape(self, principal: Principal, account_id: str, shape_id: str) -> DeploymentShape:
        public_only = _reader(principal, account_id)
        with self._db.transaction() as session:
            row = self._found(session, account_id, shape_id, public_only)
            latest = repo.get_version(session, row.pk, row.latest_version)
            assert latest is not None  # a shape is written with its first version
            return _shape(row, latest)

    def list_versions(
        self, principal: Principal, account_id: str, shape_id: str
    ) -> DeploymentShapeVersionList:
        public_only = _reader(principal, account_id)
        with self._db.transaction() as session:
            row = self._found(session, account_id, shape_id, public_only)
            versions = [_version(row, v) for v in repo.versions(session, row.pk)]
            return DeploymentShapeVersionList(
                deployment_shape_versions=versions, total_size=len(versions)
            )

    def get_version(
        self, principal: Principal, account_id: str, shape_id: str, version_id: str
    ) -> DeploymentShapeVersion:
        public_only = _reader(principal, account_id)
        with self._db.transaction() as session:
            row = self._found(session, account_id, shape_id, public_only)
            number = row.latest_version if version_id == "latest" else _number(version_id)
            version = repo.get_version(session, row.pk, number) if number else None
            if version is None:
                raise _shape_not_found(f"{shape_name(account_id, shape_id)}/versions/{version_id}")
            return _version(row, version)

    def match(
        self, principal: Principal, account_id: str, body: MatchRequest
    ) -> DeploymentShapeVersionList:
        """The latest version of every shape ``account_id`` may deploy for the model asked."""
        principal.require(account_id, Permission.RESOURCES_READ)
        wanted = body.create_deployment_request.deployment
        with self._db.transaction() as session:
            base = self._base_of(session, account_id, wanted.base_model)
            found = []
            for owner in dict.fromkeys((account_id, PLATFORM_ACCOUNT)):
                rows = repo.list_shapes(session, owner, public_only=owner != account_id)
                for row in rows:
                    latest = repo.get_version(session, row.pk, row.latest_version)
                    if latest is None or latest.base_model != base or not latest.validated:
                        continue
                    if wanted.enable_addons and not latest.snapshot.get("enableAddons"):
                        continue
                    found.append(_version(row, latest))
            return DeploymentShapeVersionList(
                deployment_shape_versions=found, total_size=len(found)
            )

    # -- writes (operator) -----------------------------------------------------

    def create(
        self, principal: Principal, account_id: str, shape_id: str, spec: ShapeSpec
    ) -> DeploymentShape:
        """A new shape (version 1); a 409 if the id is taken."""
        principal.require_operator()
        validate_id(shape_id, "deployment shape", "deploymentShapeId")
        try:
            with self._db.transaction() as session:
                if accounts_repo.get_account(session, account_id) is None:
                    raise NotFound(
                        f"Account {account_id!r} was not found.", code="account_not_found"
                    )
                return self._write(session, account_id, shape_id, spec, new=True)
        except IntegrityError:  # created meanwhile by another request
            raise _shape_exists(account_id, shape_id) from None

    def update(
        self, principal: Principal, account_id: str, shape_id: str, spec: ShapeSpec
    ) -> DeploymentShape:
        """A new version with ``spec``'s fields over the latest (none if nothing changes)."""
        principal.require_operator()
        with self._db.transaction() as session:
            return self._write(session, account_id, shape_id, spec, new=False)

    def delete(self, principal: Principal, account_id: str, shape_id: str) -> None:
        principal.require_operator()
        with self._db.transaction() as session:
            row = repo.get_shape_for_update(session, account_id, shape_id)
            if row is None or not repo.remove_shape(session, row.pk):
                raise _shape_not_found(shape_name(account_id, shape_id))

    def preload(self, path: Path | None) -> int:
        """Load the bundled shapes file, then the operator's (idempotent); shapes written."""
        written = 0
        for file in (DEFAULT_SHAPES, path):
            if file is None:
                continue
            for shape_id, spec in read_file(file):
                try:
                    self._preload_one(shape_id, spec)
                except FireboxError as exc:
                    raise ShapesFileError(f"{file}: shape {shape_id!r}: {exc.message}") from exc
                written += 1
        return written

    def _preload_one(self, shape_id: str, spec: ShapeSpec) -> None:
        """Upsert one file entry; a replica starting beside us may insert it first: then update."""
        for attempt in (1, 2):
            try:
                with self._db.transaction() as session:
                    self._write(session, PLATFORM_ACCOUNT, shape_id, spec)
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    # -- helpers ---------------------------------------------------------------

    def _write(
        self,
        session: Session,
        account_id: str,
        shape_id: str,
        spec: ShapeSpec,
        *,
        new: bool | None = None,
    ) -> DeploymentShape:
        """Upsert the shape; ``new`` True refuses an existing one, False a missing one.

        The check and the write use the same locked read, so of two creates at
        once one inserts and the other meets the unique constraint (a 409).
        """
        now = self._clock.now()
        row = repo.get_shape_for_update(session, account_id, shape_id)
        if new is True and row is not None:
            raise _shape_exists(account_id, shape_id)
        if new is False and row is None:
            raise _shape_not_found(shape_name(account_id, shape_id))
        latest = repo.get_version(session, row.pk, row.latest_version) if row else None
        before = dict(latest.snapshot) if latest else {}
        snapshot = self._snapshot(session, account_id, shape_id, spec, before)
        if row is None:
            row = DeploymentShapeRow(
                account_id=account_id,
                shape_id=shape_id,
                public=bool(spec.public),
                latest_version=1,
                create_time=now,
                update_time=now,
            )
            session.add(row)
            session.flush()
        elif snapshot == before and (spec.public is None or spec.public == row.public):
            assert latest is not None
            return _shape(row, latest)
        else:
            row.latest_version += 1
            row.public = row.public if spec.public is None else spec.public
            row.update_time = now
        version = DeploymentShapeVersionRow(
            shape_pk=row.pk,
            version=row.latest_version,
            base_model=snapshot["baseModel"],
            snapshot=snapshot,
            validated=True,
            create_time=now,
        )
        session.add(version)
        session.flush()
        return _shape(row, version)

    def _snapshot(
        self,
        session: Session,
        account_id: str,
        shape_id: str,
        spec: ShapeSpec,
        before: dict[str, Any],
    ) -> dict[str, Any]:
        merged = {**before, **spec.model_dump(by_alias=True, exclude_none=True)}
        merged.pop("public", None)
        if not merged.get("baseModel"):
            raise InvalidArgument(
                "A deployment shape needs baseModel: the model it is for.",
                code="missing_field",
                param="baseModel",
            )
        merged["baseModel"] = self._models.resolve(session, account_id, merged["baseModel"]).name
        merged.setdefault("acceleratorType", DEFAULT_TYPE)
        merged.setdefault("acceleratorCount", 1)
        for key, allowed in (
            ("acceleratorType", ACCELERATOR_TYPES),
            ("precision", PRECISIONS),
            ("presetType", PRESET_TYPES),
        ):
            if key in merged and merged[key] not in allowed:
                raise InvalidArgument(
                    f"{key} {merged[key]!r} is not one of {', '.join(allowed)}.",
                    code="invalid_shape",
                    param=key,
                )
        merged["name"] = shape_name(account_id, shape_id)
        return snapshot_fields(DeploymentShape.model_validate(merged))

    def _base_of(self, session: Session, account_id: str, model: str) -> str:
        """The base model a deployment of ``model`` serves (an add-on: its base)."""
        resolved = self._models.resolve(session, account_id, model)
        return resolved.base_model or resolved.name

    @staticmethod
    def _found(
        session: Session, account_id: str, shape_id: str, public_only: bool
    ) -> DeploymentShapeRow:
        row = repo.get_shape(session, account_id, shape_id)
        if row is None or (public_only and not row.public):
            raise _shape_not_found(shape_name(account_id, shape_id))
        return row


def _reader(principal: Principal, account_id: str) -> bool:
    """Check read access; True when only the public shapes may be seen (the platform's)."""
    if account_id == PLATFORM_ACCOUNT and not principal.is_operator:
        return principal.account_id != PLATFORM_ACCOUNT
    principal.require(account_id, Permission.RESOURCES_READ)
    return False


def _visible(shape: DeploymentShapeRow, account_id: str) -> bool:
    return shape.account_id == account_id or (shape.account_id == PLATFORM_ACCOUNT and shape.public)


def _shape(row: DeploymentShapeRow, version: DeploymentShapeVersionRow) -> DeploymentShape:
    fields = {**version.snapshot, "name": shape_name(row.account_id, row.shape_id)}
    shape = DeploymentShape.model_validate(fields)
    return shape.model_copy(update={"create_time": row.create_time, "update_time": row.update_time})


def _version(row: DeploymentShapeRow, version: DeploymentShapeVersionRow) -> DeploymentShapeVersion:
    return DeploymentShapeVersion(
        name=shape_version_name(row.account_id, row.shape_id, version.version),
        create_time=version.create_time,
        snapshot=_shape(row, version),
        validated=version.validated,
        public=row.public,
        latest_validated=version.version == row.latest_version,
    )


def _split(name: str, account_id: str) -> tuple[str, str, int | None]:
    """``(owner, shape id, version or None)`` of a shape reference."""
    if "/" not in name:
        return account_id, name, None
    parts = name.split("/")
    if len(parts) in (4, 6) and parts[0] == "accounts" and parts[2] == "deploymentShapes":
        if len(parts) == 4:
            return parts[1], parts[3], None
        if parts[4] == "versions":
            number = None if parts[5] == "latest" else _number(parts[5])
            if number is not None or parts[5] == "latest":
                return parts[1], parts[3], number
    raise _shape_not_found(name)


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 10 and int(text) > 0 else None


def _shape_exists(account_id: str, shape_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"Deployment shape {shape_name(account_id, shape_id)!r} already exists; change it "
        "with PATCH (each change is a new version).",
        code="deployment_shape_exists",
        headers={"x-should-retry": "false"},
    )


def _shape_not_found(name: str) -> NotFound:
    return NotFound(
        f"Deployment shape {name!r} was not found. List them with GET "
        f"/v1/accounts/{PLATFORM_ACCOUNT}/deploymentShapes (public) or your account's.",
        code="deployment_shape_not_found",
    )
