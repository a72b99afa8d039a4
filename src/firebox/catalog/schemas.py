"""Wire models of the catalog, shaped as the ``fireworks-ai`` SDK's ``models`` resource.

SDK field names throughout (``baseModelDetails.parameterCount`` is a string,
as protobuf renders int64), plus Firebox's own: ``priceClass`` (derived),
``price``, ``imageVariant``, ``engine``, ``upstreamAdapter`` and ``adapterPath``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from firebox.catalog.binding import (
    DEFAULT_UPSTREAM_TIMEOUT_S,
    EngineBinding,
    LocalEngine,
    UpstreamEngine,
)
from firebox.catalog.index import ResolvedModel
from firebox.catalog.kinds import ImageVariant, ModelKind
from firebox.catalog.models import ModelRow
from firebox.catalog.price_class import PriceClass, format_price
from firebox.wire import RequestModel, WireModel

# -- requests -----------------------------------------------------------------


class BaseModelDetailsSpec(RequestModel):
    """Size of a base, embedding or image model; it decides the price class."""

    parameter_count: int | None = Field(default=None, ge=1, le=10**15)  # "8000000000" or 8e9
    moe: bool = False
    model_type: str | None = Field(default=None, max_length=64)


class PeftDetailsSpec(RequestModel):
    """A LoRA add-on's base model and adapter shape."""

    base_model: str = Field(min_length=1, max_length=200)
    r: int = Field(ge=4, le=64, description="LoRA rank; 4 to 64 as the Fireworks API allows.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=64
    )


class LocalEngineSpec(RequestModel):
    type: Literal["local"]
    path: str | None = Field(default=None, max_length=1024)

    def to_binding(self) -> LocalEngine:
        return LocalEngine(path=self.path or None)


class UpstreamEngineSpec(RequestModel):
    type: Literal["upstream"]
    urls: list[str] = Field(min_length=1, max_length=32)
    upstream_model: str = Field(min_length=1, max_length=255)
    api_key: str | None = Field(default=None, max_length=1024)
    timeout_s: float = Field(default=DEFAULT_UPSTREAM_TIMEOUT_S, gt=0, le=3600)
    tokenizer: str | None = Field(
        default=None,
        max_length=1024,
        description="Path, on the gateway, of the model's tokenizer.json (or its folder): "
        "used to check context length and to count tokens an upstream does not report.",
    )

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        """Only http(s) base URLs: the gateway POSTs inference requests to them."""
        cleaned = []
        for url in urls:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
            if parts.query or parts.fragment:
                raise ValueError(f"{url!r}: give a base URL without query or fragment")
            cleaned.append(url.strip().rstrip("/"))
        return cleaned

    def to_binding(self) -> UpstreamEngine:
        return UpstreamEngine(
            urls=tuple(self.urls),
            upstream_model=self.upstream_model,
            api_key=self.api_key or None,
            timeout_s=self.timeout_s,
            tokenizer=self.tokenizer or None,
        )


EngineSpec = Annotated[LocalEngineSpec | UpstreamEngineSpec, Field(discriminator="type")]


class ModelSpec(RequestModel):
    """The ``model`` object of a create, and every field a PATCH may send.

    The kind defaults to ``HF_PEFT_ADDON``, as in the Fireworks API.
    """

    display_name: str | None = Field(default=None, max_length=63)
    description: str | None = Field(default=None, max_length=999)
    kind: ModelKind | None = None
    public: bool | None = None
    context_length: int | None = Field(default=None, ge=1, le=100_000_000)
    supports_image_input: bool | None = None
    supports_tools: bool | None = None
    supports_lora: bool | None = None
    base_model_details: BaseModelDetailsSpec | None = None
    peft_details: PeftDetailsSpec | None = None
    image_variant: ImageVariant | None = None
    price: str | None = Field(
        default=None,
        description="Explicit price, USD per 1M tokens (per step for image models), "
        'as a decimal string such as "0.90"; null derives it from the price class.',
    )
    engine: EngineSpec | None = Field(default=None, description="Engine binding; operator only.")
    upstream_adapter: str | None = Field(
        default=None,
        max_length=255,
        description="A LoRA add-on's adapter name on a vLLM upstream; operator only.",
    )
    adapter_path: str | None = Field(
        default=None,
        max_length=1024,
        description="A LoRA add-on's PEFT folder, as its engine reads it, for engines that "
        "load adapters at run time (vLLM's load_lora_adapter, the in-process engine); "
        "operator only.",
    )

    def given(self) -> set[str]:
        """Names of the fields the request set (explicit nulls included)."""
        return set(self.model_fields_set)


class ModelCreate(RequestModel):
    """The body of ``POST /v1/accounts/{account}/models`` as the SDK sends it."""

    model_id: str | None = Field(default=None, max_length=63)
    model: ModelSpec = Field(default_factory=ModelSpec)
    cluster: str | None = None


# -- answers ------------------------------------------------------------------


class BaseModelDetails(WireModel):
    parameter_count: str | None = None
    moe: bool = False
    model_type: str | None = None


class PeftDetails(WireModel):
    base_model: str
    r: int
    target_modules: list[str]


class LocalEngineView(WireModel):
    type: Literal["local"] = "local"
    path: str | None = None


class UpstreamEngineView(WireModel):
    """An upstream binding as shown to the operator: the API key itself is never echoed."""

    type: Literal["upstream"] = "upstream"
    urls: list[str]
    upstream_model: str
    api_key_set: bool
    timeout_s: float
    tokenizer: str | None = None

    @classmethod
    def of(cls, binding: UpstreamEngine) -> UpstreamEngineView:
        return cls(
            urls=list(binding.urls),
            upstream_model=binding.upstream_model,
            api_key_set=binding.api_key is not None,
            timeout_s=binding.timeout_s,
            tokenizer=binding.tokenizer,
        )


def engine_view(binding: EngineBinding | None) -> LocalEngineView | UpstreamEngineView | None:
    if binding is None:
        return None
    if isinstance(binding, LocalEngine):
        return LocalEngineView(path=binding.path)
    return UpstreamEngineView.of(binding)


class ModelStatus(WireModel):
    """Why a model is not READY: the last validation's verdict (the SDK's ``Status``)."""

    code: str
    message: str


class Model(WireModel):
    """A model as the SDK's ``Model`` type reads it, plus Firebox's pricing and binding."""

    name: str
    display_name: str
    description: str
    kind: ModelKind
    state: Literal["READY", "UPLOADING"] = "READY"
    status: ModelStatus | None = None
    public: bool
    context_length: int | None
    supports_image_input: bool
    supports_tools: bool
    supports_lora: bool
    supports_serverless: bool
    base_model_details: BaseModelDetails | None
    peft_details: PeftDetails | None
    image_variant: ImageVariant | None
    price_class: PriceClass | None
    price: str | None
    engine: LocalEngineView | UpstreamEngineView | None = Field(
        default=None, description="Shown to the operator only."
    )
    upstream_adapter: str | None
    adapter_path: str | None = Field(default=None, description="Shown to the operator only.")
    create_time: datetime
    update_time: datetime

    @classmethod
    def of(cls, row: ModelRow, resolved: ResolvedModel, *, show_engine: bool) -> Model:
        """The answer for ``row``; ``resolved`` carries what an add-on inherits from its base."""
        details = None
        if resolved.kind is not ModelKind.LORA_ADDON:
            details = BaseModelDetails(
                parameter_count=None if row.parameter_count is None else str(row.parameter_count),
                moe=row.moe,
                model_type=row.model_type,
            )
        peft = None
        if resolved.adapter is not None and resolved.base_model is not None:
            peft = PeftDetails(
                base_model=resolved.base_model,
                r=resolved.adapter.rank,
                target_modules=list(resolved.adapter.target_modules),
            )
        price = resolved.price_micro_usd
        return cls(
            name=resolved.name,
            display_name=row.display_name,
            description=row.description,
            kind=resolved.kind,
            public=row.public,
            state="UPLOADING" if row.state == "UPLOADING" else "READY",
            status=_status(row),
            context_length=resolved.context_length,
            supports_image_input=resolved.supports_image_input,
            supports_tools=row.supports_tools,
            supports_lora=row.supports_lora,
            supports_serverless=resolved.engine is not None,
            base_model_details=details,
            peft_details=peft,
            image_variant=ImageVariant(row.image_variant) if row.image_variant else None,
            price_class=resolved.price_class,
            price=None if price is None else format_price(price),
            engine=engine_view(resolved.engine) if show_engine else None,
            upstream_adapter=row.upstream_adapter,
            adapter_path=row.adapter_path if show_engine else None,
            create_time=row.create_time,
            update_time=row.update_time,
        )


def _status(row: ModelRow) -> ModelStatus:
    if row.status_message:
        return ModelStatus(code="INVALID_ARGUMENT", message=row.status_message)
    if row.state == "UPLOADING":
        return ModelStatus(
            code="OK",
            message="Waiting for files: :getUploadEndpoint, upload, then :validateUpload.",
        )
    return ModelStatus(code="OK", message="")


class ModelList(WireModel):
    models: list[Model]
    next_page_token: str = ""
    total_size: int
