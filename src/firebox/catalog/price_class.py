"""Price classes: which row of the price book (SPEC §2) a model is billed by.

SPEC §2 prices serverless models by kind and size:

- text, dense: up to 16B parameters; 16.1B - 80B;
- text, mixture-of-experts (by total parameters): up to 56B; 56.1B - 176B;
- embedding: up to 150M parameters; 150M - 350M;
- image generation: SDXL, or SDXL with ControlNet (per denoising step).

The catalog derives the class; the dollar amounts belong to billing. A
bucket's upper bound is inclusive and the next one starts just above it
(16B is the small dense class, anything over 16B the next). A model that
fits no bucket (a 405B dense model, a 1B embedding model) has no class and
must carry an explicit price: serving it without one is a configuration
error (SPEC §2). A LoRA add-on is billed at its base model's rate.

Explicit prices are decimal strings of USD (per 1M tokens for text and
embedding models, per step for image models), kept as integer micro-USD.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum

from firebox.catalog.kinds import ImageVariant, ModelKind
from firebox.errors import InvalidArgument

B = 1_000_000_000
M = 1_000_000


class PriceClass(StrEnum):
    """A row of the SPEC §2 price book."""

    TEXT_DENSE_UP_TO_16B = "TEXT_DENSE_UP_TO_16B"
    TEXT_DENSE_16B_TO_80B = "TEXT_DENSE_16B_TO_80B"
    TEXT_MOE_UP_TO_56B = "TEXT_MOE_UP_TO_56B"
    TEXT_MOE_56B_TO_176B = "TEXT_MOE_56B_TO_176B"
    EMBEDDING_UP_TO_150M = "EMBEDDING_UP_TO_150M"
    EMBEDDING_150M_TO_350M = "EMBEDDING_150M_TO_350M"
    IMAGE_SDXL = "IMAGE_SDXL"
    IMAGE_SDXL_CONTROLNET = "IMAGE_SDXL_CONTROLNET"


# (inclusive upper bound in parameters, class), smallest first.
DENSE_TEXT: tuple[tuple[int, PriceClass], ...] = (
    (16 * B, PriceClass.TEXT_DENSE_UP_TO_16B),
    (80 * B, PriceClass.TEXT_DENSE_16B_TO_80B),
)
MOE_TEXT: tuple[tuple[int, PriceClass], ...] = (
    (56 * B, PriceClass.TEXT_MOE_UP_TO_56B),
    (176 * B, PriceClass.TEXT_MOE_56B_TO_176B),
)
EMBEDDING: tuple[tuple[int, PriceClass], ...] = (
    (150 * M, PriceClass.EMBEDDING_UP_TO_150M),
    (350 * M, PriceClass.EMBEDDING_150M_TO_350M),
)
IMAGE: dict[ImageVariant, PriceClass] = {
    ImageVariant.SDXL: PriceClass.IMAGE_SDXL,
    ImageVariant.SDXL_CONTROLNET: PriceClass.IMAGE_SDXL_CONTROLNET,
}

# SPEC §2 describes the buckets; shown in errors so an operator sees what fits.
BUCKETS_TEXT = (
    "dense text up to 80B, mixture-of-experts up to 176B total, embeddings up to 350M, "
    "image models SDXL or SDXL_CONTROLNET"
)


def _bucket(table: tuple[tuple[int, PriceClass], ...], parameters: int | None) -> PriceClass | None:
    if parameters is None:
        return None
    for upper, price_class in table:
        if parameters <= upper:
            return price_class
    return None


def classify(
    kind: ModelKind, parameter_count: int | None, moe: bool, image_variant: ImageVariant | None
) -> PriceClass | None:
    """The price class of a base model of ``kind``, or None if it fits no bucket.

    A LoRA add-on has no class of its own: classify its base model instead.
    """
    if kind is ModelKind.TEXT_BASE:
        return _bucket(MOE_TEXT if moe else DENSE_TEXT, parameter_count)
    if kind is ModelKind.EMBEDDING:
        return _bucket(EMBEDDING, parameter_count)
    if kind is ModelKind.IMAGE:
        return IMAGE.get(image_variant) if image_variant is not None else None
    return None


_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
MICROS = 1_000_000
MAX_PRICE_MICROS = 1_000_000 * MICROS  # $1M per unit: anything above is a typo


def parse_price(text: str, param: str = "price") -> int:
    """Micro-USD of a decimal string such as ``"0.90"``; exact, never through a float."""
    if not _DECIMAL.fullmatch(text):
        raise InvalidArgument(
            f"Invalid price {text!r}: give a non-negative decimal number of US dollars as a "
            'string, such as "0.90".',
            code="invalid_price",
            param=param,
        )
    micros = Decimal(text) * MICROS
    if micros != micros.to_integral_value():
        raise InvalidArgument(
            f"Invalid price {text!r}: at most 6 decimal places (one micro-dollar).",
            code="invalid_price",
            param=param,
        )
    if micros > MAX_PRICE_MICROS:
        raise InvalidArgument(
            f"Invalid price {text!r}: at most 1000000 US dollars.",
            code="invalid_price",
            param=param,
        )
    return int(micros)


def format_price(micros: int) -> str:
    """A micro-USD amount as a decimal string with at least two decimals ("0.20", "0.00013")."""
    text = f"{Decimal(micros) / MICROS:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"
