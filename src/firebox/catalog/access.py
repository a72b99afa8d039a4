"""Who may see and change which model.

Reads: an account's own models need ``resources.read`` in it; the platform
account's public models are readable by every caller; anything else is a
404, exactly like a model that does not exist, so that a caller learns
nothing about another account. Writes: the operator may do anything; a
member with ``resources.write`` may manage LoRA add-ons in its own account,
without an engine binding: a binding names the URLs the gateway calls.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission, Plan
from firebox.catalog import repository as repo
from firebox.catalog.kinds import ModelKind, model_name
from firebox.catalog.models import ModelRow
from firebox.errors import NotFound, PermissionDenied


def model_not_found(name: str) -> NotFound:
    return NotFound(
        f"Model {name!r} was not found. List the models you can use with "
        f"GET /v1/accounts/{PLATFORM_ACCOUNT}/models (shared models) and "
        "GET /v1/accounts/<your account>/models (your own).",
        code="model_not_found",
    )


def authorize_write(
    principal: Principal, kind: ModelKind, fields: set[str], plan: Plan | None = None
) -> None:
    """Members manage LoRA add-ons (and, on Enterprise, base models), never engine bindings.

    ``plan`` is the plan of the account written to; custom base models (their
    own weights, uploaded) are an Enterprise capability (SPEC §1).
    """
    if principal.is_operator:
        return
    own_base = kind is ModelKind.TEXT_BASE and plan is Plan.ENTERPRISE
    if kind is ModelKind.TEXT_BASE and not own_base:
        shown = plan.value.title() if plan is not None else "its"
        raise PermissionDenied(
            f"Custom base models (kind HF_BASE_MODEL, your own weights) need the Enterprise "
            f"plan; this account is on the {shown} plan. Ask the operator to change the "
            "plan, or create a LoRA add-on (kind HF_PEFT_ADDON) on a base model you can see.",
            code="plan_required",
            param="kind",
        )
    if kind is not ModelKind.LORA_ADDON and not own_base:
        raise PermissionDenied(
            f"Only the platform operator may create or change {kind.value} models; "
            "you may create LoRA add-ons (kind HF_PEFT_ADDON) on a base model you can see.",
            code="operator_only",
            param="kind",
        )
    for field, param in (
        ("engine", "engine"),
        ("upstream_adapter", "upstreamAdapter"),
        ("adapter_path", "adapterPath"),
        ("price", "price"),
    ):
        if field in fields:
            raise PermissionDenied(
                f"Only the platform operator may set {param}: it tells the gateway which "
                "engine to call, an engine what to read, or what a model costs. Omit it; "
                "uploaded files are served by the engine the validation picks.",
                code="operator_only",
                param=param,
            )


def visible_in(row: ModelRow, account_id: str) -> bool:
    """Whether members of ``account_id`` may see (and build add-ons on) ``row``."""
    return row.account_id == account_id or (row.public and row.account_id == PLATFORM_ACCOUNT)


def readable(session: Session, principal: Principal, account_id: str, model_id: str) -> ModelRow:
    """The model to show ``principal``, or the 404 a missing model gets."""
    if principal.is_operator or principal.account_id == account_id:
        principal.require(account_id, Permission.RESOURCES_READ)
        row = repo.get_model(session, account_id, model_id)
    elif account_id == PLATFORM_ACCOUNT:
        row = repo.get_model(session, account_id, model_id)
        row = row if row is not None and row.public else None
    else:
        principal.require(account_id, Permission.RESOURCES_READ)  # raises: a 404
        row = None
    if row is None:
        raise model_not_found(model_name(account_id, model_id))
    return row


def writable(session: Session, principal: Principal, account_id: str, model_id: str) -> ModelRow:
    """The model ``principal`` may change or delete, as far as its account and role go; locked.

    Whether its kind is one the principal may change is ``authorize_write``'s question.
    """
    outsider = not principal.is_operator and principal.account_id != account_id
    if outsider and account_id == PLATFORM_ACCOUNT:
        row = repo.get_model(session, account_id, model_id)
        if row is not None and row.public:
            raise PermissionDenied(
                "Models of the platform account are changed by the operator only.",
                code="operator_only",
            )
        raise model_not_found(model_name(account_id, model_id))
    principal.require(account_id, Permission.RESOURCES_WRITE)
    found = repo.get_model_for_update(session, account_id, model_id)  # held until commit
    if found is None:
        raise model_not_found(model_name(account_id, model_id))
    return found
