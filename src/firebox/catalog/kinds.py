"""What a model is, and how its resource name is spelled.

Kinds keep the Fireworks SDK's wire values, so the unmodified SDK parses
them; the Python names say what they mean in Firebox.
"""

from __future__ import annotations

from enum import StrEnum

from firebox.accounts.bootstrap import PLATFORM_ACCOUNT

PREFIX = "accounts/"


class ModelKind(StrEnum):
    """The kinds of model Firebox serves (the SDK's ``Model.kind`` values)."""

    TEXT_BASE = "HF_BASE_MODEL"
    LORA_ADDON = "HF_PEFT_ADDON"
    EMBEDDING = "EMBEDDING_MODEL"
    IMAGE = "FLUMINA_BASE_MODEL"


class ImageVariant(StrEnum):
    """Which image pipeline an image model runs; it decides its price class (SPEC §2)."""

    SDXL = "SDXL"
    SDXL_CONTROLNET = "SDXL_CONTROLNET"


def model_name(account_id: str, model_id: str) -> str:
    """The resource name ``accounts/{account}/models/{model}``."""
    return f"{PREFIX}{account_id}/models/{model_id}"


def split_name(name: str) -> tuple[str, str] | None:
    """``(account, model)`` of a model reference, or None if it is malformed.

    A bare ``m`` (no slash) is shorthand for ``accounts/firebox/models/m``,
    the platform's own models, as people write ``llama-v3-8b`` in requests.
    """
    if "/" not in name:
        return (PLATFORM_ACCOUNT, name) if name else None
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        return None
    if not parts[1] or not parts[3]:
        return None
    return parts[1], parts[3]
