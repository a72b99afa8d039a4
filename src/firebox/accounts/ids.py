"""Validation of resource ids (`accounts/{id}`, `users/{id}`)."""

from __future__ import annotations

import re

from firebox.errors import InvalidArgument

_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def validate_id(value: str, kind: str, param: str) -> str:
    """Return ``value`` if it is a valid resource id, else raise a 400 that says why."""
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"Invalid {kind} id {value!r}: use 1-63 lowercase letters, digits or hyphens, "
            "starting and ending with a letter or digit.",
            code="invalid_id",
            param=param,
        )
    return value


def id_from_email(email: str) -> str:
    """A user id derived from an email address, as the Fireworks API does."""
    local = email.split("@", 1)[0].lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", local).strip("-")
    return cleaned[:63] or "user"
