"""``firebox serve`` and ``firebox db upgrade``: running and migrating a server.

Server modules are imported inside the commands, so that the API commands
(the common case) start without loading FastAPI, SQLAlchemy and uvicorn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from firebox.cli.errors import CliError, UsageError

if TYPE_CHECKING:
    from firebox.settings import Settings

DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Data directory [env: FIREBOX_DATA_DIR].", show_default=False),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL [env: FIREBOX_DATABASE_URL]; default: SQLite in the data dir.",
        show_default=False,
    ),
]


def build_settings(**overrides: Any) -> Settings:
    """``Settings`` from ``FIREBOX_*`` variables, with the flags given on the command line."""
    from pydantic import ValidationError

    from firebox.settings import Settings

    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UsageError(f"Invalid setting {where}: {message}.") from None


def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [env: FIREBOX_HOST].", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on [env: FIREBOX_PORT].", show_default=False)
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis URL for shared counters [env: FIREBOX_REDIS_URL].", show_default=False
        ),
    ] = None,
) -> None:
    """Run the Firebox server: migrate, create first-start keys, then serve HTTP."""
    settings = build_settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
    )
    from firebox.catalog.preload import CatalogFileError
    from firebox.server import serve as run_server

    try:
        run_server(settings)
    except CatalogFileError as exc:  # a bad catalog file is the operator's to fix: one line
        raise CliError(f"cannot start: {exc}") from None


def db_upgrade(
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Migrate the database to the newest schema (the server also does this on start)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from firebox.store import migrate
    from firebox.store.database import Database

    settings = build_settings(database_url=database_url, data_dir=data_dir)
    if settings.database_url is None:
        from firebox.private_files import private_dir

        private_dir(settings.data_dir)
    db = Database(settings.resolved_database_url())
    shown = make_url(db.url).render_as_string(hide_password=True)
    try:
        migrate.upgrade(db)
        revision = migrate.current_revision(db)
    except SQLAlchemyError as exc:
        raise CliError(f"Cannot migrate {shown}: {type(exc).__name__}: {exc}") from None
    finally:
        db.dispose()
    typer.echo(f"Database {shown} is at revision {revision}.")


def register(root: typer.Typer) -> None:
    """Add ``serve`` and the ``db`` group to the root app."""
    root.command("serve")(serve)
    db = typer.Typer(help="Database maintenance.", no_args_is_help=True)
    db.command("upgrade")(db_upgrade)
    root.add_typer(db, name="db")
