"""Refuse control characters in a request's URL before any route sees it.

Path segments (account, user, model ids) and query parameters (ids,
``filter``, ``pageToken``) reach queries as text; one check here covers every
route, present and future, with the rule of ``firebox.text``. Plain ASGI, as
the other middleware, so it costs one regex scan of the path and query.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from firebox import text
from firebox.errors import InvalidArgument
from firebox.http.errors import render


def url_error(path: str, query_string: bytes) -> InvalidArgument | None:
    """The 400 for a path or query holding a control character, or None."""
    problem = text.url_problem(path)
    if problem:
        return InvalidArgument(
            f"The URL path {problem} (ids are letters, digits and hyphens).", code=text.CODE
        )
    # Decoded as Starlette decodes it for the routes, so both see the same values.
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        problem = text.url_problem(name) or text.url_problem(value)
        if problem:
            return InvalidArgument(
                f"Query parameter {name!r} {problem}.", code=text.CODE, param=name
            )
    return None


class UrlTextMiddleware:
    """Answer a 400 to any request whose decoded path or query holds a control character."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = url_error(scope["path"], scope.get("query_string", b""))
            if error is not None:
                await render(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
