"""``filter`` (a subset of AIP-160) and ``orderBy`` over the deployments of one account.

An account has few deployments, so a list reads them all, filters and orders
them here, and pages by position: the token is the opaque offset of the next
page (the SDK re-sends the same query with it).

Filter grammar: terms ``field OP value`` joined by ``AND`` / ``OR`` (AND binds
tighter), ``NOT`` before a term; OP is ``=``, ``!=``, ``<``, ``<=``, ``>``,
``>=`` or ``:`` (contains); a value is a quoted string or a bare word. Fields
are named in camelCase or snake_case. ``orderBy``: ``"field [asc|desc], ..."``;
the default is ``create_time``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic.alias_generators import to_snake

from firebox.errors import InvalidArgument

Record = dict[str, Any]

FIELDS = (
    "name",
    "deployment_id",
    "display_name",
    "description",
    "base_model",
    "accelerator_type",
    "accelerator_count",
    "min_replica_count",
    "max_replica_count",
    "replica_count",
    "desired_replica_count",
    "deployment_shape",
    "enable_addons",
    "precision",
    "state",
    "create_time",
    "update_time",
    "delete_time",
)

_TOKEN = re.compile(
    r"\s*(?:(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')|(?P<op><=|>=|!=|=|<|>|:)"
    r"|(?P<paren>[()])|(?P<word>[^\s=<>!:()\"']+))"
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
    ":": lambda a, b: str(b).lower() in str(a).lower(),
}

Predicate = Callable[[Record], bool]


def field_of(raw: str, param: str) -> str:
    name = to_snake(raw.strip())
    if name not in FIELDS:
        raise InvalidArgument(
            f"{param} names an unknown field {raw!r}; the fields are {', '.join(FIELDS)}.",
            code="invalid_filter" if param == "filter" else "invalid_order_by",
            param=param,
        )
    return name


def parse_filter(text: str | None) -> Predicate:
    """A predicate over deployment records; ``None`` or blank matches everything."""
    if text is None or not text.strip():
        return lambda _: True
    tokens = _tokens(text)
    parser = _Parser(tokens)
    predicate = parser.expression()
    if parser.position != len(tokens):
        raise _bad_filter(f"unexpected {tokens[parser.position][1]!r}")
    return predicate


@dataclass(frozen=True, slots=True)
class OrderKey:
    field: str
    descending: bool


def parse_order(text: str | None) -> list[OrderKey]:
    if text is None or not text.strip():
        return [OrderKey("create_time", False)]
    keys = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise InvalidArgument(
                f"orderBy must be 'field [asc|desc], ...'; got {text!r}.",
                code="invalid_order_by",
                param="orderBy",
            )
        keys.append(OrderKey(field_of(words[0], "orderBy"), words[-1] == "desc"))
    return keys


def order(records: Sequence[Record], keys: list[OrderKey]) -> list[Record]:
    """``records`` sorted by ``keys``, then in creation order (stable, None first)."""
    result = sorted(records, key=lambda r: int(r["pk"]))
    for key in reversed(keys):
        result.sort(key=_by(key.field), reverse=key.descending)
    return result


def _by(field: str) -> Callable[[Record], tuple[int, Any]]:
    return lambda record: _sort_value(record.get(field))


def _sort_value(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, int(value))
    return (1, value)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _bad_filter(f"cannot read it at {text[position:][:20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise _bad_filter("it ends too early")
        self.position += 1
        return token

    def expression(self) -> Predicate:
        terms = [self._conjunction()]
        while self._peek() == ("word", "OR"):
            self.position += 1
            terms.append(self._conjunction())
        if len(terms) == 1:
            return terms[0]
        return lambda r: any(t(r) for t in terms)

    def _conjunction(self) -> Predicate:
        terms = [self._term()]
        while True:
            token = self._peek()
            if token == ("word", "AND"):
                self.position += 1
            elif token is None or token in (("word", "OR"), ("paren", ")")):
                break
            terms.append(self._term())  # juxtaposition is AND, as AIP-160 says
        if len(terms) == 1:
            return terms[0]
        return lambda r: all(t(r) for t in terms)

    def _term(self) -> Predicate:
        token = self._take()
        if token == ("word", "NOT"):
            inner = self._term()
            return lambda r: not inner(r)
        if token == ("paren", "("):
            inner = self.expression()
            if self._take() != ("paren", ")"):
                raise _bad_filter("a '(' is not closed")
            return inner
        if token[0] != "word":
            raise _bad_filter(f"expected a field name, got {token[1]!r}")
        field = field_of(token[1], "filter")
        kind, op = self._take()
        if kind != "op":
            raise _bad_filter(f"expected an operator after {token[1]!r}, got {op!r}")
        value_kind, value = self._take()
        if value_kind == "str":
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        elif value_kind != "word":
            raise _bad_filter(f"expected a value after {op!r}")
        compare = _OPS[op]

        def predicate(record: Record) -> bool:
            actual = record.get(field)
            try:
                return (
                    compare(actual, _coerce(actual, value))
                    if actual is not None
                    else (op == "!=" and value not in ("null", ""))
                    or (op == "=" and value in ("null", ""))
                )
            except (TypeError, ValueError):
                return False

        return predicate


def _coerce(actual: Any, value: str) -> Any:
    if isinstance(actual, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(value)
        return value.lower() == "true"
    if isinstance(actual, int):
        return int(value)
    if isinstance(actual, datetime):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _bad_filter(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"filter is not an expression this server reads ({why}). Write terms such as "
        'state = "READY" AND accelerator_type = "NVIDIA_A100_80GB".',
        code="invalid_filter",
        param="filter",
    )
