"""Alembic environment: runs migrations on the engine handed in by ``migrate.py``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from firebox.store.models import metadata

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via migrate.py
    raise RuntimeError("run migrations through firebox.store.migrate (firebox db upgrade)")

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # SQLite alters a table by rebuilding it (batch mode), which a live
        # foreign key to that table would refuse; PostgreSQL alters in place.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
