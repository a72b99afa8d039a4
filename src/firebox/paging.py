"""Cursor pagination as the Fireworks API does it: ``pageSize`` and ``pageToken``.

A token is the opaque, URL-safe encoding of the last id of the previous page,
so listing is a keyset query that stays fast and stable while rows are added.
"""

from __future__ import annotations

import base64
import binascii
import re

from firebox.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_ROW_ID = 2**63 - 1  # a 64-bit key column: the largest id a token may carry

_ROW_ID = re.compile(r"[1-9][0-9]{0,18}")


def page_size(requested: int | None) -> int:
    """The page size to use: default 50, at most 200, as the Fireworks API documents."""
    if requested is None or requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested < 0:
        raise InvalidArgument("pageSize must not be negative.", param="pageSize")
    return min(requested, MAX_PAGE_SIZE)


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_token(token: str | None) -> str | None:
    """The id to continue after, or None for the first page; a bad token is a 400."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid_token() from None


def decode_row_id_token(token: str | None) -> int | None:
    """The numeric row id to continue from, or None for the first page.

    Validated fully, as the keyset query will bind it to a 64-bit column: a
    canonical decimal from 1 to ``MAX_ROW_ID``, else the same 400 as any bad
    token (never an overflow in the database driver).
    """
    decoded = decode_token(token)
    if decoded is None:
        return None
    if not _ROW_ID.fullmatch(decoded) or int(decoded) > MAX_ROW_ID:
        raise _invalid_token()
    return int(decoded)


def _invalid_token() -> InvalidArgument:
    return InvalidArgument(
        "pageToken is not a token this server issued; pass the nextPageToken of the "
        "previous page, or omit it for the first page.",
        code="invalid_page_token",
        param="pageToken",
    )


def next_token(ids: list[str], size: int) -> str:
    """The token for the page after one holding ``ids``, or "" when it was the last."""
    return encode_token(ids[-1]) if len(ids) == size and ids else ""
