"""The Ray dashboard's REST API, as the Ray Serve driver uses it (asynchronous, no ``ray`` import).

- ``PUT /api/serve/applications/``: apply the whole Serve config declaratively;
- ``GET /api/serve/applications/``: applications, deployments, replicas and
  their states (what GPU-seconds are metered on);
- ``DELETE /api/serve/applications/``: shut Serve down;
- ``GET /api/v0/nodes``: the state API's nodes with their resources (capacity).

Ray 2.60 turns token authentication on by default; ``token`` is sent as
``Authorization: Bearer``. A loopback test cluster runs with
``RAY_AUTH_MODE=disabled`` and no token.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from firebox.errors import ServiceUnavailable


class RayDashboardError(ServiceUnavailable):
    """The Ray dashboard did not answer, or answered with an error."""

    default_code = "ray_unavailable"


class RayDashboard:
    """A keep-alive client of one Ray cluster's dashboard (``http://head:8265``)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        )

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = await self._client.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise RayDashboardError(
                f"The Ray dashboard at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                "the operator checks FIREBOX_RAY_DASHBOARD_URL and the Ray head node."
            ) from exc
        if response.status_code >= 400:
            text = response.text[:500]
            raise RayDashboardError(
                f"The Ray dashboard answered {method} {path} with HTTP "
                f"{response.status_code}: {text}"
            )
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None

    async def serve_details(self) -> dict[str, Any]:
        """``GET /api/serve/applications/``: Serve's applications and their replicas."""
        data = await self._call("GET", "/api/serve/applications/")
        return data if isinstance(data, dict) else {}

    async def put_serve_config(self, config: dict[str, Any]) -> None:
        """``PUT /api/serve/applications/``: make Serve run exactly ``config``."""
        await self._call("PUT", "/api/serve/applications/", config)

    async def delete_serve(self) -> None:
        """``DELETE /api/serve/applications/``: stop every application and Serve itself."""
        await self._call("DELETE", "/api/serve/applications/")

    async def nodes(self) -> list[dict[str, Any]]:
        """The cluster's alive nodes with ``resources_total`` (state API)."""
        data = await self._call("GET", "/api/v0/nodes?limit=10000")
        result = (data or {}).get("data", {}).get("result", {})
        rows = result.get("result", []) if isinstance(result, dict) else []
        return [row for row in rows if isinstance(row, dict) and row.get("state") == "ALIVE"]

    async def close(self) -> None:
        await self._client.aclose()
