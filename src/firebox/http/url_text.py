"""Refuse control characters in a request's URL before any route sees it.

Path segments (account, user, model ids) and query parameters (ids,
``filter``, ``pageToken``) reach queries as text; one check here covers every
route, present and future, with the rule of ``firebox.text``. The check runs
inside ``RequestContextMiddleware`` (``http/middleware.py``), not as a
middleware of its own: every ASGI layer adds a frame to each resume of the
request's coroutine, which a stream pays per chunk. So it costs one regex scan
of the path and query, and its 400 carries a request id and is logged.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from firebox import text
from firebox.errors import InvalidArgument


def url_error(path: str, query_string: bytes) -> InvalidArgument | None:
    """The 400 for a path or query holding a control character, or None."""
    if not query_string and path.isprintable():  # every request's case: no scan, no parse
        return None  # (a control character is never printable)
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
