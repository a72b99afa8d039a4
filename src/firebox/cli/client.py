"""A small synchronous client of the Firebox HTTP API for the command line.

Every failure leaves this module as a ``CliError`` subclass (see ``errors``),
so a command never needs its own ``try``: an error body becomes an
``ApiError`` carrying its status, code and message, and a refused connection
becomes ``ServerUnreachable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from firebox.cli.errors import ApiError, CliError, ServerUnreachable, UsageError

JSONObject = dict[str, Any]

DEFAULT_TIMEOUT_S = 30.0
PAGE_SIZE = 200  # the most the API serves per page
_NO_KEY_HINT = (
    " No API key was found: pass --api-key or set FIREBOX_API_KEY (a local server's "
    "operator key is read from $FIREBOX_DATA_DIR/credentials.json)."
)


def segment(value: str) -> str:
    """``value`` escaped as one path segment, so an id can never change the route."""
    return quote(value, safe="")


@dataclass(frozen=True)
class Listing:
    """Every item of a paginated list, gathered across pages."""

    items: list[JSONObject]
    total_size: int


class ApiClient:
    """Sends authenticated JSON requests and turns error answers into ``ApiError``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.has_key = bool(api_key)
        try:
            self._http = httpx.Client(
                base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise UsageError(f"Invalid base URL {base_url!r}: {exc}") from None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: Mapping[str, str | int] | None = None) -> JSONObject:
        return self.request("GET", path, params=params)

    def post(
        self,
        path: str,
        body: JSONObject | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> JSONObject:
        return self.request("POST", path, body=body if body is not None else {}, params=params)

    def patch(self, path: str, body: JSONObject) -> JSONObject:
        return self.request("PATCH", path, body=body)

    def list_all(self, path: str, field: str) -> Listing:
        """Follow ``nextPageToken`` until the last page; ``field`` names the items array."""
        items: list[JSONObject] = []
        seen: set[str] = set()
        params: dict[str, str | int] = {"pageSize": PAGE_SIZE}
        while True:
            page = self.get(path, params)
            items.extend(page.get(field) or [])
            token = str(page.get("nextPageToken") or "")
            if not token or token in seen:  # a repeated token would loop forever
                return Listing(items=items, total_size=int(page.get("totalSize", len(items))))
            seen.add(token)
            params["pageToken"] = token

    def request(
        self,
        method: str,
        path: str,
        *,
        body: JSONObject | None = None,
        params: Mapping[str, str | int] | None = None,
        content: Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> JSONObject:
        """Send one request; return its JSON object or raise a ``CliError``.

        ``content`` sends a raw (streamed) body instead of ``body``'s JSON,
        with ``headers`` (an upload); ``timeout`` overrides the default.
        """
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._http.request(
                method, path, json=body, params=params, content=content, headers=headers, **extra
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(
                f"Cannot connect to the Firebox server at {self.base_url} ({exc}). "
                "Is `firebox serve` running? Set --base-url or FIREBOX_BASE_URL."
            ) from None
        except httpx.UnsupportedProtocol:
            raise UsageError(
                f"Invalid base URL {self.base_url!r}: use http:// or https://."
            ) from None
        except httpx.TransportError as exc:
            raise CliError(
                f"The request to {self.base_url} failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.is_error:
            error = error_from_response(response)
            if response.status_code == 401 and not self.has_key:
                error.message += _NO_KEY_HINT
            raise error
        return _json_object(response)


def error_from_response(response: httpx.Response) -> ApiError:
    """An ``ApiError`` from an error answer, whether or not it has Firebox's error body."""
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict):
        return ApiError(
            response.status_code,
            str(detail.get("message") or response.reason_phrase),
            code=str(detail.get("code") or ""),
            error_type=str(detail.get("type") or ""),
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return ApiError(response.status_code, f"HTTP {response.status_code}: {text}")


def _json_object(response: httpx.Response) -> JSONObject:
    try:
        data = response.json()
    except ValueError:
        raise CliError(
            f"The server answered {response.request.method} {response.request.url.path} "
            "with something that is not JSON; is --base-url a Firebox server?"
        ) from None
    if not isinstance(data, dict):
        raise CliError("The server answered with JSON that is not an object.")
    return data
