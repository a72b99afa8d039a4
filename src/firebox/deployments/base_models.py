"""Which models a deployment may serve: a base text model, or a LoRA add-on (live merge).

The name is stored in full (``accounts/<a>/models/<m>``; a bare ``m`` means
the platform's). The model must be visible to the account (its own, or a
public one of the platform: anything else is the same 404 as a model that
does not exist) and its base must have an engine binding, or no replica
could serve it.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.orm import Session

from firebox.catalog import access
from firebox.catalog import repository as catalog_repo
from firebox.catalog.index import ResolvedModel, resolve_row
from firebox.catalog.kinds import ModelKind, model_name, split_name
from firebox.deployments.spec import FullSpec
from firebox.errors import FailedPrecondition, InvalidArgument

DEPLOYABLE = (ModelKind.TEXT_BASE, ModelKind.LORA_ADDON)


class BaseModels:
    """Checks a deployment's ``baseModel`` against the catalog."""

    def resolve(self, session: Session, account_id: str, name: str) -> ResolvedModel:
        """The deployable model ``name`` as ``account_id`` sees it, or a 4xx saying why not."""
        parts = split_name(name)
        row = catalog_repo.get_model(session, *parts) if parts else None
        if row is None or not access.visible_in(row, account_id):
            raise access.model_not_found(name)
        full = model_name(row.account_id, row.model_id)
        if row.kind not in DEPLOYABLE:
            raise InvalidArgument(
                f"{full} is a {row.kind} model; deployments serve text models "
                "(HF_BASE_MODEL, or a LoRA add-on HF_PEFT_ADDON merged onto its base).",
                code="model_not_deployable",
                param="baseModel",
            )
        base = (
            catalog_repo.get_model_by_pk(session, row.base_model_pk)
            if row.base_model_pk is not None
            else None
        )
        resolved = resolve_row(row, base)
        if resolved.engine is None:
            raise FailedPrecondition(
                f"{full} has no engine bound, so no replica could serve it; the operator "
                "binds one in the catalog.",
                code="model_not_served",
                param="baseModel",
            )
        return resolved

    def check(self, session: Session, account_id: str, spec: FullSpec) -> FullSpec:
        """``spec`` with its base model named in full, once the model is deployable."""
        resolved = self.resolve(session, account_id, spec.base_model)
        spec = replace(spec, base_model=resolved.name)
        self._check_context(resolved, spec)
        return spec

    def check_context(self, session: Session, account_id: str, spec: FullSpec) -> None:
        self._check_context(self.resolve(session, account_id, spec.base_model), spec)

    def same_base(self, session: Session, account_id: str, current: str, asked: str) -> None:
        """A PATCH may repeat ``baseModel`` (the SDK always sends it) but not change it."""
        parts = split_name(asked)
        if parts is not None and model_name(*parts) == current:
            return
        raise InvalidArgument(
            f"The deployment serves {current}; its baseModel cannot change. Create a new "
            "deployment for the other model.",
            code="base_model_immutable",
            param="baseModel",
        )

    @staticmethod
    def _check_context(resolved: ResolvedModel, spec: FullSpec) -> None:
        limit = resolved.context_length
        if spec.max_context_length is not None and limit and spec.max_context_length > limit:
            raise InvalidArgument(
                f"maxContextLength {spec.max_context_length} is above {resolved.name}'s "
                f"context length {limit}.",
                code="invalid_max_context_length",
                param="maxContextLength",
            )
