"""Migrations build exactly the schema the models describe, and undo cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from firebox.store import migrate
from firebox.store.database import Database
from firebox.store.models import metadata


def test_head_schema_matches_the_models(database: Database) -> None:
    assert migrate.is_current(database)
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_downgrade_to_base_and_back(database: Database) -> None:
    migrate.downgrade(database, "base")
    tables = set(inspect(database.engine).get_table_names())
    assert tables <= {"alembic_version"}
    assert migrate.current_revision(database) is None
    migrate.upgrade(database)
    assert migrate.is_current(database)
    assert {"accounts", "users", "api_keys"} <= set(inspect(database.engine).get_table_names())


def test_upgrade_is_idempotent(database: Database) -> None:
    migrate.upgrade(database)
    migrate.upgrade(database)
    assert migrate.current_revision(database) == migrate.head_revision(database)
