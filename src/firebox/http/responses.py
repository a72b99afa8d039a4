"""A JSON response serialized with orjson (fast, and handles datetimes)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSON


class JSONResponse(_StarletteJSON):
    """Starlette's JSON response, rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
