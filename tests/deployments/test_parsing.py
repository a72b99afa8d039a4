"""Durations, filters and orderings: the small parsers of the deployments API."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from firebox.deployments import durations, listing, shape_repository
from firebox.deployments.shape_files import ShapesFileError
from firebox.errors import InvalidArgument
from firebox.services import Services


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("600s", 600),
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("42", 42),
        (7, 7),
        (" 5M ", 300),
    ],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert durations.parse(text, "f") == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "-5s", "1e999", True, None, "10m5", "inf"])
def test_bad_durations_name_the_field(text: object) -> None:
    with pytest.raises(InvalidArgument) as error:
        durations.parse(text, "autoscalingPolicy.scaleUpWindow")
    assert error.value.param == "autoscalingPolicy.scaleUpWindow"


def test_durations_emit_seconds() -> None:
    assert [durations.emit(s) for s in (600.0, 1.5, 0.25)] == ["600s", "1.5s", "0.25s"]


RECORDS = [
    {
        "pk": 1,
        "name": "a",
        "state": "READY",
        "accelerator_count": 2,
        "enable_addons": True,
        "create_time": datetime(2026, 1, 2, tzinfo=UTC),
        "precision": None,
    },
    {
        "pk": 2,
        "name": "b",
        "state": "CREATING",
        "accelerator_count": 1,
        "enable_addons": False,
        "create_time": datetime(2026, 1, 1, tzinfo=UTC),
        "precision": "FP8",
    },
]


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('state = "READY"', ["a"]),
        ("state != READY", ["b"]),
        ("acceleratorCount >= 2", ["a"]),
        ("enable_addons = false", ["b"]),
        ('NOT state = "READY"', ["b"]),
        ('(state = "READY" OR accelerator_count < 2) AND name : "b"', ["b"]),
        ('state = "READY" state = "CREATING"', []),
        ('create_time > "2026-01-01T12:00:00Z"', ["a"]),
        ("precision = null", ["a"]),
        ("", ["a", "b"]),
    ],
)
def test_filters(expression: str, names: list[str]) -> None:
    predicate = listing.parse_filter(expression)
    assert [r["name"] for r in RECORDS if predicate(r)] == names


@pytest.mark.parametrize(
    "expression", ["state =", "= READY", "(state = READY", "state ~ x", "x = 1"]
)
def test_bad_filters(expression: str) -> None:
    with pytest.raises(InvalidArgument):
        listing.parse_filter(expression)


def test_orderings() -> None:
    by_time = listing.order(RECORDS, listing.parse_order(None))
    assert [r["name"] for r in by_time] == ["b", "a"]
    desc = listing.order(RECORDS, listing.parse_order("acceleratorCount desc, name"))
    assert [r["name"] for r in desc] == ["a", "b"]
    with pytest.raises(InvalidArgument):
        listing.parse_order("name sideways")


def test_a_bad_shapes_file_stops_the_start(services: Services, tmp_path: Path) -> None:
    bad = tmp_path / "shapes.toml"
    bad.write_text('[[deployment_shapes]]\nid = "x"\nbaseModel = "accounts/firebox/models/nope"\n')
    with pytest.raises(ShapesFileError, match=r"shapes.toml: shape 'x'.*nope"):
        services.deployments.shapes.preload(bad)
    good = tmp_path / "good.toml"
    good.write_text(
        '[[deployment_shapes]]\nid = "tiny-2"\nbaseModel = "firebox-tiny"\n'
        "acceleratorCount = 2\npublic = true\n"
    )
    assert services.deployments.shapes.preload(good) == 2  # the bundled one, and this one
    assert services.deployments.shapes.preload(good) == 2
    with services.db.transaction() as session:  # idempotent: still one version
        shape = shape_repository.get_shape(session, "firebox", "tiny-2")
        assert shape is not None
        assert [v.version for v in shape_repository.versions(session, shape.pk)] == [1]


def test_preload_survives_another_replica_writing_the_shape_first(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes = services.deployments.shapes
    real_write = shapes._write
    raced: list[str] = []

    def racing(session: Any, account_id: str, shape_id: str, spec: Any, **kw: Any) -> Any:
        if shape_id == "raced" and not raced:
            raced.append(shape_id)
            with services.db.transaction() as other:  # the replica starting beside us
                real_write(other, account_id, shape_id, spec)
            raise IntegrityError("INSERT", {}, Exception("duplicate key"))
        return real_write(session, account_id, shape_id, spec, **kw)

    monkeypatch.setattr(shapes, "_write", racing)
    file = tmp_path / "shapes.toml"
    file.write_text('[[deployment_shapes]]\nid = "raced"\nbaseModel = "firebox-tiny"\n')
    assert shapes.preload(file) == 2
    assert raced == ["raced"]
    with services.db.transaction() as session:
        shape = shape_repository.get_shape(session, "firebox", "raced")
        assert shape is not None and shape.latest_version == 1
