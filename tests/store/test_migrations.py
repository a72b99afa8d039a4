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


def test_0005_recounts_the_deployed_models_quota(database: Database) -> None:
    """Add-ons loaded before 0005 by catalog files held no quota unit; 0005 counts them."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from firebox.accounts.models import AccountRow
    from firebox.catalog.deployed_models import DeployedModelRow
    from firebox.catalog.models import ModelRow
    from firebox.limits.models import QuotaRow

    migrate.downgrade(database, "0004")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with database.transaction() as session:
        session.add(AccountRow(id="acme", plan="BUSINESS", create_time=now, update_time=now))
        session.flush()
        for name in ("a", "b"):
            # Only the columns 0004 has: later migrations add more to ModelRow.
            inserted = session.execute(
                insert(ModelRow.__table__).values(
                    account_id="acme",
                    model_id=name,
                    kind="HF_PEFT_ADDON",
                    display_name=name,
                    description="",
                    public=False,
                    state="READY",
                    supports_image_input=False,
                    supports_tools=False,
                    supports_lora=False,
                    moe=False,
                    create_time=now,
                    update_time=now,
                )
            )
            # Core, naming the columns of 0004 (the row has columns added since).
            session.execute(
                DeployedModelRow.__table__.insert().values(
                    account_id="acme",
                    deployed_model_id=name,
                    model_pk=inserted.inserted_primary_key[0],
                    display_name="",
                    description="",
                    state="DEPLOYED",
                    create_time=now,
                    update_time=now,
                )
            )
    migrate.upgrade(database)
    with database.transaction() as session:
        quota = session.get(QuotaRow, ("acme", "deployed-models"))
        assert quota is not None and quota.usage == 2
