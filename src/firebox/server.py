"""Starting a gateway process: migrate, bootstrap, then serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from firebox.accounts.bootstrap import BootstrapResult, run_bootstrap, save_credentials
from firebox.app import create_app
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store import migrate


def prepare(settings: Settings) -> tuple[Services, BootstrapResult]:
    """Create the data dir, migrate the database and run the first-start bootstrap."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = build_services(settings)
    migrate.upgrade(services.db)
    result = run_bootstrap(
        services.db,
        services.clock,
        admin_key=settings.admin_key,
        with_demo=settings.bootstrap_demo,
    )
    save_credentials(settings.data_dir, result)
    return services, result


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def serve(settings: Settings, announce: bool = True) -> None:
    """Run one gateway process until interrupted."""
    configure_logging(settings.log_level)
    services, result = prepare(settings)
    if announce:
        from firebox.cli.banner import print_banner

        print_banner(settings, result)
    app = create_app(services)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # Firebox writes its own structured access log
        lifespan="on",
    )
