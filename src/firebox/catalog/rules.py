"""What a model of each kind may and must carry, and the price rule of SPEC §2.

Pure functions over a ``ModelSpec`` and a ``ModelRow``: the service calls
them inside its transaction, so a refused write leaves nothing behind.
"""

from __future__ import annotations

from datetime import datetime

from pydantic.alias_generators import to_camel

from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.catalog.binding import binding_to_json
from firebox.catalog.kinds import ImageVariant, ModelKind, model_name
from firebox.catalog.models import ModelRow
from firebox.catalog.price_class import BUCKETS_TEXT, classify, parse_price
from firebox.catalog.schemas import ModelSpec
from firebox.errors import InvalidArgument

_TEXT, _ADDON, _EMBED, _IMAGE = (
    ModelKind.TEXT_BASE,
    ModelKind.LORA_ADDON,
    ModelKind.EMBEDDING,
    ModelKind.IMAGE,
)
READY, UPLOADING = "READY", "UPLOADING"
_INHERITED = " (a LoRA add-on inherits it from its base model)"

# Fields that only some kinds may set, and why the others may not.
KIND_FIELDS: dict[str, tuple[frozenset[ModelKind], str]] = {
    "context_length": (frozenset({_TEXT, _EMBED}), _INHERITED),
    "supports_image_input": (frozenset({_TEXT}), _INHERITED),
    "supports_tools": (frozenset({_TEXT}), ""),
    "supports_lora": (frozenset({_TEXT}), ""),
    "base_model_details": (frozenset({_TEXT, _EMBED, _IMAGE}), _INHERITED),
    "peft_details": (frozenset({_ADDON}), ""),
    "image_variant": (frozenset({_IMAGE}), ""),
    "price": (
        frozenset({_TEXT, _EMBED, _IMAGE}),
        " (a LoRA add-on is billed at its base model's rate, SPEC §2)",
    ),
    "engine": (
        frozenset({_TEXT, _EMBED, _IMAGE}),
        " (a LoRA add-on is served by its base model's engine; set upstreamAdapter instead)",
    ),
    "upstream_adapter": (frozenset({_ADDON}), ""),
    "adapter_path": (frozenset({_ADDON}), ""),
}


def check_kind_fields(kind: ModelKind, spec: ModelSpec, fields: set[str]) -> None:
    """Refuse any field set (non-null) that a model of ``kind`` cannot carry."""
    for field in sorted(fields):
        rule = KIND_FIELDS.get(field)
        if rule is None or getattr(spec, field) is None:
            continue
        kinds, why = rule
        if kind not in kinds:
            param = to_camel(field)
            raise InvalidArgument(
                f"{param} does not apply to {kind.value} models{why}; remove it.",
                code="field_not_allowed",
                param=param,
            )


def check_required(kind: ModelKind, spec: ModelSpec, *, creating: bool) -> None:
    """The fields a model of ``kind`` cannot be without."""
    if (
        kind is _ADDON
        and spec.peft_details is None
        and (creating or "peft_details" in spec.given())
    ):
        raise InvalidArgument(
            "A LoRA add-on (HF_PEFT_ADDON) needs peftDetails: {baseModel, r, targetModules}.",
            code="missing_field",
            param="peftDetails",
        )
    if (
        kind is _IMAGE
        and spec.image_variant is None
        and (creating or "image_variant" in spec.given())
    ):
        variants = ", ".join(v.value for v in ImageVariant)
        raise InvalidArgument(
            f"An image model (FLUMINA_BASE_MODEL) needs imageVariant: one of {variants}.",
            code="missing_field",
            param="imageVariant",
        )


def new_row(account_id: str, model_id: str, kind: ModelKind, now: datetime) -> ModelRow:
    """A model with every column at its default, before the request's fields apply."""
    return ModelRow(
        account_id=account_id,
        model_id=model_id,
        kind=kind.value,
        display_name=model_id,
        description="",
        public=False,
        state="READY",
        upload_files=None,
        upload_bytes=None,
        status_message=None,
        context_length=None,
        supports_image_input=False,
        supports_tools=False,
        supports_lora=kind is _TEXT,
        parameter_count=None,
        moe=False,
        model_type=None,
        image_variant=None,
        base_model_pk=None,
        lora_rank=None,
        target_modules=None,
        upstream_adapter=None,
        adapter_path=None,
        price_micro_usd=None,
        engine=None,
        create_time=now,
        update_time=now,
    )


def apply_spec(row: ModelRow, spec: ModelSpec, fields: set[str]) -> None:
    """Copy the fields the request set onto ``row``; the base model is the service's job."""
    if "display_name" in fields:
        row.display_name = spec.display_name or row.model_id
    if "description" in fields:
        row.description = spec.description or ""
    if "public" in fields:
        row.public = bool(spec.public)
    if "context_length" in fields:
        row.context_length = spec.context_length
    for flag in ("supports_image_input", "supports_tools", "supports_lora"):
        if flag in fields:
            setattr(row, flag, bool(getattr(spec, flag)))
    if "base_model_details" in fields:
        details = spec.base_model_details
        row.parameter_count = details.parameter_count if details else None
        row.moe = details.moe if details else False
        row.model_type = details.model_type if details else None
    if "image_variant" in fields:
        row.image_variant = spec.image_variant.value if spec.image_variant else None
    if "price" in fields:
        row.price_micro_usd = parse_price(spec.price) if spec.price is not None else None
    if "engine" in fields:
        row.engine = binding_to_json(spec.engine.to_binding()) if spec.engine else None
    if "upstream_adapter" in fields:
        row.upstream_adapter = spec.upstream_adapter or None
    if "adapter_path" in fields:
        row.adapter_path = spec.adapter_path or None
    if spec.peft_details is not None:
        row.lora_rank = spec.peft_details.r
        row.target_modules = list(spec.peft_details.target_modules)


def initial_state(row: ModelRow) -> str:
    """UPLOADING for a model whose weights are still to come, else READY.

    A LoRA add-on without a folder or an upstream adapter name, and a text
    base model without an engine, wait for their files (``:getUploadEndpoint``).
    """
    kind = ModelKind(row.kind)
    if kind is _ADDON and row.adapter_path is None and row.upstream_adapter is None:
        return UPLOADING
    if kind is _TEXT and row.engine is None:
        return UPLOADING
    return READY


def check_public(row: ModelRow) -> None:
    """Only the platform account's models are shared with every account."""
    if row.public and row.account_id != PLATFORM_ACCOUNT:
        raise InvalidArgument(
            f"Only models of the platform account {PLATFORM_ACCOUNT!r} can be public; "
            f"models of {row.account_id!r} are visible inside that account only.",
            code="public_outside_platform",
            param="public",
        )


def _describe(row: ModelRow) -> str:
    kind = ModelKind(row.kind)
    if kind is _IMAGE:
        return "an image model without imageVariant"
    if row.parameter_count is None:
        return f"a {kind.value} model without baseModelDetails.parameterCount"
    shape = "mixture-of-experts" if row.moe and kind is _TEXT else "dense"
    what = "embedding" if kind is _EMBED else f"{shape} text"
    return f"a {what} model of {row.parameter_count:,} parameters"


def check_price(row: ModelRow) -> None:
    """SPEC §2: a base model outside every price bucket must carry an explicit price."""
    kind = ModelKind(row.kind)
    if kind is _ADDON or row.price_micro_usd is not None:
        return
    if row.state == UPLOADING and row.parameter_count is None:
        return  # its count comes from the uploaded weights; checked again at validation
    variant = ImageVariant(row.image_variant) if row.image_variant else None
    if classify(kind, row.parameter_count, row.moe, variant) is None:
        raise InvalidArgument(
            f"{model_name(row.account_id, row.model_id)} is {_describe(row)}, which fits no "
            f"price class of the price book ({BUCKETS_TEXT}); set an explicit price "
            '(USD per 1M tokens as a string, e.g. "3.00").',
            code="price_required",
            param="price",
        )
