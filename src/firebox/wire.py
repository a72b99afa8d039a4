"""Base classes for wire models: camelCase JSON, strict about unknown fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from firebox import text


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
