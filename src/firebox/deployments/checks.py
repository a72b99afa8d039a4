"""The checks and names the deployments service shares: ids, plans, tokens, PATCH paths, errors."""

from __future__ import annotations

import secrets
import string
from datetime import datetime

from pydantic.alias_generators import to_snake
from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.roles import Plan
from firebox.deployments import repository as repo
from firebox.deployments import spec as specs
from firebox.deployments.accelerators import allowed_on
from firebox.deployments.models import DeploymentRow, deployment_name
from firebox.deployments.schemas import DeploymentSpec
from firebox.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from firebox.paging import decode_token

_ID_CHARS = string.ascii_lowercase + string.digits
_NO_RETRY = {"x-should-retry": "false"}


def plan(session: Session, account_id: str, *, lock: bool = False) -> Plan:
    """The account's plan (a 404 if none); ``lock`` holds the account row (see suspension.py)."""
    if lock:
        account = accounts_repo.account_for_update(session, account_id)
    else:
        account = accounts_repo.get_account(session, account_id)
    if account is None:
        raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")
    return Plan(account.plan)


def check_plan(accelerator_type: str, plan: Plan) -> None:
    if not allowed_on(accelerator_type, plan):
        raise FailedPrecondition(
            f"{accelerator_type} accelerators are for Enterprise accounts; this account is on "
            f"the {plan.value} plan. Deploy on NVIDIA_A100_80GB, or ask the platform operator "
            "to move the account to Enterprise.",
            code="plan_required",
            param="acceleratorType",
        )


def short_id(account_id: str, deployment_id: str) -> str:
    """The short id of ``deployment_id``, which may be the full resource name."""
    if "/" not in deployment_id:
        return deployment_id
    parts = deployment_id.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "deployments":
        if parts[1] != account_id:
            raise not_found(account_id, deployment_id, deleted=False)
        return parts[3]
    raise InvalidArgument(
        f"{deployment_id!r} is neither a deployment id nor accounts/<account>/deployments/<id>.",
        code="invalid_id",
        param="deploymentId",
    )


def free_id(session: Session, account_id: str) -> str:
    while True:
        candidate = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
        if candidate[0].isalpha() and repo.get(session, account_id, candidate) is None:
            return candidate


def purged(row: DeploymentRow, now: datetime) -> bool:
    return row.purge_time is not None and row.purge_time <= now


def offset(token: str | None) -> int:
    decoded = decode_token(token)
    if decoded is None:
        return 0
    if not decoded.startswith("o") or not decoded[1:].isdigit() or len(decoded) > 12:
        raise InvalidArgument(
            "pageToken is not a token this server issued; pass the nextPageToken of the "
            "previous page, or omit it for the first page.",
            code="invalid_page_token",
            param="pageToken",
        )
    return int(decoded[1:])


def paths(body: DeploymentSpec, update_mask: str | None) -> set[str]:
    """The snake_case field paths a PATCH changes."""
    if update_mask is not None and update_mask.strip():
        paths: set[str] = set()
        for raw in update_mask.split(","):
            path = ".".join(to_snake(p.strip()) for p in raw.split("."))
            if path == "autoscaling_policy":
                paths.update(f"autoscaling_policy.{f}" for f in specs.POLICY_FIELDS)
            elif path in specs.SPEC_FIELDS or (
                path.startswith("autoscaling_policy.")
                and path.split(".", 1)[1] in specs.POLICY_FIELDS
            ):
                paths.add(path)
            else:
                raise InvalidArgument(
                    f"updateMask names {raw.strip()!r}, which is not a field that can change; "
                    f"the fields are {', '.join(specs.SPEC_FIELDS)}.",
                    code="invalid_update_mask",
                    param="updateMask",
                )
        return paths
    present = set(body.model_fields_set) & set(specs.SPEC_FIELDS)
    if "autoscaling_policy" in present:
        present.discard("autoscaling_policy")
        policy = body.autoscaling_policy
        fields = policy.model_fields_set if policy is not None else set(specs.POLICY_FIELDS)
        present.update(f"autoscaling_policy.{f}" for f in fields)
    return present


def not_found(account_id: str, deployment_id: str, *, deleted: bool) -> NotFound:
    hint = (
        " It is deleted: undelete it with POST …/deployments/{id}:undelete, or list it with "
        "showDeleted=true."
        if deleted
        else ""
    )
    return NotFound(
        f"Deployment {deployment_name(account_id, deployment_id)!r} was not found.{hint} "
        f"List deployments with GET /v1/accounts/{account_id}/deployments.",
        code="deployment_not_found",
    )


def exists(account_id: str, deployment_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"Deployment {deployment_name(account_id, deployment_id)!r} already exists; choose "
        "another deploymentId, or change that one with PATCH.",
        code="deployment_exists",
        headers=dict(_NO_RETRY),
    )
