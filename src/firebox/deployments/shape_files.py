"""Shapes files: ``[[deployment_shapes]]`` tables the platform account's shapes are loaded from.

The bundled ``default_shapes.toml`` is loaded at every start, then the
operator's ``FIREBOX_DEPLOYMENT_SHAPES_FILE`` (docs/api.md, "Deployment shapes").
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from firebox.deployments.shape_schemas import ShapeSpec

DEFAULT_SHAPES = Path(__file__).with_name("default_shapes.toml")


class ShapesFileError(Exception):
    """A shapes file cannot be loaded; the message says where and why."""


def read_file(path: Path) -> list[tuple[str, ShapeSpec]]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ShapesFileError(f"{path}: cannot read it ({exc})") from exc
    entries = data.get("deployment_shapes", [])
    if not isinstance(entries, list):
        raise ShapesFileError(f"{path}: deployment_shapes must be a list of tables")
    out = []
    for index, raw in enumerate(entries):
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise ShapesFileError(f"{path}: entry {index} needs an id")
        fields = {k: v for k, v in raw.items() if k != "id"}
        try:
            spec = ShapeSpec.model_validate(fields)
        except ValidationError as exc:
            raise ShapesFileError(f"{path}: shape {raw['id']!r}: {exc}") from exc
        out.append((raw["id"], spec))
    return out
