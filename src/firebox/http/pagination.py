"""Query parameters shared by every ``list`` route, as the Fireworks API names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from firebox.errors import InvalidArgument


@dataclass(frozen=True)
class ListParams:
    page_size: int | None
    page_token: str | None


def list_params(
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
    filter_: Annotated[str | None, Query(alias="filter")] = None,
    order_by: Annotated[str | None, Query(alias="orderBy")] = None,
    read_mask: Annotated[str | None, Query(alias="readMask")] = None,
) -> ListParams:
    """Parse paging; refuse filters and orderings we do not implement rather than ignore them."""
    if filter_:
        raise InvalidArgument(
            "filter is not supported on this list; list everything and filter locally.",
            code="unsupported_parameter",
            param="filter",
        )
    if order_by and order_by.strip() not in ("name", "name asc"):
        raise InvalidArgument(
            "Lists are ordered by name only; omit orderBy or pass 'name'.",
            code="unsupported_parameter",
            param="orderBy",
        )
    if read_mask and read_mask.strip() not in ("*", "\\*"):
        raise InvalidArgument(
            "readMask is not supported; every field is returned. Omit it or pass '*'.",
            code="unsupported_parameter",
            param="readMask",
        )
    return ListParams(page_size=page_size, page_token=page_token)


Listing = Annotated[ListParams, Depends(list_params)]
