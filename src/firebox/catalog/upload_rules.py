"""What model uploads allow: limits, file names, who may upload what, where files live."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from firebox.accounts import repository as accounts_repo
from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.accounts.roles import Plan
from firebox.catalog import rules
from firebox.catalog.binding import LocalEngine, binding_to_json
from firebox.catalog.kinds import ModelKind, model_name
from firebox.catalog.models import ModelRow
from firebox.catalog.upload_checks import Problem, file_name_problem
from firebox.errors import FailedPrecondition, InvalidArgument, PayloadTooLarge, PermissionDenied

_UPLOADABLE = (ModelKind.LORA_ADDON, ModelKind.TEXT_BASE)
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(frozen=True)
class UploadLimits:
    """The operator's bounds on uploads (``FIREBOX_MODEL_UPLOAD_*``, storage quota, rank)."""

    max_file_bytes: int
    max_files: int
    account_quota_bytes: int
    max_lora_rank: int


@dataclass(frozen=True)
class Pending:
    """What validation needs, read in one short transaction."""

    name: str
    kind: ModelKind
    files: dict[str, int]
    prefix: str
    declared_rank: int | None
    declared_targets: tuple[str, ...]
    base_path: str | None  # the folder of an add-on's base, when the local engine serves it
    upstream_bound: bool
    price_set: bool
    unserved_base: str | None = None  # an add-on's base that has no engine (yet)


def files_prefix(account_id: str, model_id: str) -> str:
    return f"models/{account_id}/{model_id}"


def set_prefix(account_id: str, model_id: str, files: dict[str, int]) -> str:
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]
    return f"{files_prefix(account_id, model_id)}/{digest}"


def check_request(files: dict[str, int], limits: UploadLimits) -> None:
    """Refuse file names and sizes before any URL is handed out."""
    if len(files) > limits.max_files:
        raise InvalidArgument(
            f"{len(files)} files is more than the {limits.max_files} one model may have.",
            code="too_many_files",
            param="filenameToSize",
        )
    problems = []
    for name in sorted(files):
        why = file_name_problem(name)
        if not _FILE_NAME.match(name):
            why = (
                "give plain file names: letters, digits, '.', '_' and '-', no folders, "
                "not starting with '.' or '-'"
            )
        if why is not None:
            problems.append(Problem(name, why))
    if problems:
        raise InvalidArgument(
            "These files are refused:\n" + "\n".join(f"- {p}" for p in problems),
            code="file_refused",
            param="filenameToSize",
        )
    for name, size in sorted(files.items()):
        if size > limits.max_file_bytes:
            raise PayloadTooLarge(
                f"{name} is {size:,} bytes; one file may have at most "
                f"{limits.max_file_bytes:,} (FIREBOX_MODEL_UPLOAD_MAX_FILE_BYTES). "
                "Split the weights into safetensors shards.",
                code="file_too_large",
                param="filenameToSize",
            )


def plan_of(session: Session, account_id: str) -> Plan | None:
    account = accounts_repo.get_account(session, account_id)
    return Plan(account.plan) if account is not None else None


def check_uploadable(row: ModelRow, kind: ModelKind, plan: Plan | None) -> None:
    name = model_name(row.account_id, row.model_id)
    if kind not in _UPLOADABLE:
        raise InvalidArgument(
            f"{name} is a {kind.value} model; files are uploaded for LoRA add-ons "
            "(HF_PEFT_ADDON) and base models (HF_BASE_MODEL).",
            code="upload_not_supported",
        )
    if (
        kind is ModelKind.TEXT_BASE
        and plan is not Plan.ENTERPRISE
        and (row.account_id != PLATFORM_ACCOUNT)
    ):
        shown = plan.value.title() if plan is not None else "another"
        raise PermissionDenied(
            f"Custom base models need the Enterprise plan; account {row.account_id!r} is on "
            f"the {shown} plan.",
            code="plan_required",
        )
    if row.state != rules.UPLOADING:
        raise FailedPrecondition(
            f"{name} is {row.state} and takes no more files; create a new model for other weights.",
            code="model_not_uploading",
        )


def apply_base(row: ModelRow, folder: Path, updates: dict[str, object]) -> None:
    count = updates["parameter_count"]
    assert isinstance(count, int)
    row.parameter_count = count
    row.moe = bool(updates["moe"])
    model_type = updates["model_type"]
    row.model_type = model_type if isinstance(model_type, str) else None
    context = updates["context_length"]
    if row.context_length is None and isinstance(context, int):
        row.context_length = context
    if row.engine is None:
        row.engine = binding_to_json(LocalEngine(path=str(folder)))
    row.supports_lora = True
