"""Run and inspect Alembic migrations without an ``alembic.ini``.

The server migrates on start and ``firebox db upgrade`` calls the same
function, so there is one way a schema comes to exist.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from firebox.store.database import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    """An Alembic config bound to ``db``'s engine (passed through ``attributes``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = db.engine
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    command.upgrade(alembic_config(db), revision)


def downgrade(db: Database, revision: str) -> None:
    """Take the schema down to ``revision`` (used by the migration tests)."""
    command.downgrade(alembic_config(db), revision)


def head_revision(db: Database) -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config(db)).get_current_head()


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(db: Database) -> bool:
    """True when the database is migrated to the code's head."""
    return current_revision(db) == head_revision(db)
