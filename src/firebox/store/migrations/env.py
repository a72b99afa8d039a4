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
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
