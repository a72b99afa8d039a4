"""Base classes for wire models: camelCase JSON, strict about unknown fields.

Also the one bound on times we accept (``Timestamp``, ``check_time``): years
1970 to 9998. Python's datetime ends at 9999-12-31 and starts at 0001-01-01,
so a time at either end with a UTC offset overflows when it is converted to
UTC (a 500); a bounded time never does, whatever arithmetic follows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from firebox import text

MIN_YEAR = 1970
MAX_YEAR = 9998


def time_out_of_range(value: datetime) -> str | None:
    """Why ``value`` is refused, or ``None`` if it is within the accepted years."""
    if MIN_YEAR <= value.year <= MAX_YEAR:
        return None
    return f"times must lie in the years {MIN_YEAR} to {MAX_YEAR}"


def _bounded(value: datetime) -> datetime:
    reason = time_out_of_range(value)
    if reason is not None:
        raise ValueError(reason)
    return value


Timestamp = Annotated[datetime, AfterValidator(_bounded)]
"""A datetime field of a request body: a 400 naming the field outside the accepted years."""


class WireModel(BaseModel):
    """A JSON body we send: camelCase keys."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RequestModel(BaseModel):
    """A JSON body we accept: camelCase keys, and an unknown field is a 400.

    Every string in it, nested ones included, follows ``firebox.text``'s rule
    for control-plane text (no NUL, no control character but tab and
    newlines), so a name that one store keeps and the other refuses is a 400
    on both, before any work.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", str_strip_whitespace=True
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        # On the raw JSON, before any field parses it, so that an email or an enum
        # holding a NUL gets this error too; "at" locates the string for the 400.
        for where, string in text.strings_in(value):
            problem = text.text_problem(string)
            if problem:
                raise PydanticCustomError(text.CODE, problem, {"at": ".".join(where)})
        return value
