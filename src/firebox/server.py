"""Starting a gateway process: migrate, bootstrap, then serve with uvicorn."""

from __future__ import annotations

import gc
import logging
import sys

import uvicorn

from firebox import key_strength
from firebox.accounts.bootstrap import BootstrapResult, run_bootstrap
from firebox.accounts.credentials import save_credentials
from firebox.app import create_app
from firebox.catalog.preload import preload
from firebox.http.connection_guard import ConnectionGuard
from firebox.private_files import tighten_tree
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store import migrate

log = logging.getLogger("firebox.server")


def initialize(services: Services) -> BootstrapResult:
    """On a migrated database: the first-start bootstrap, then the catalog files.

    Idempotent; every start runs it (and so do the tests' app fixtures).
    """
    settings = services.settings
    result = run_bootstrap(
        services.db,
        services.clock,
        admin_key=settings.admin_key,
        with_demo=settings.bootstrap_demo,
    )
    preload(services.catalog, settings.catalog_file)  # raises CatalogFileError on a bad entry
    for name in result.created:
        if name.startswith("accounts/"):
            services.billing.open_account(name.split()[0].removeprefix("accounts/"))
    # Replays usage a killed process left in the spool, then starts the ledger writer.
    services.money.ingest.start()
    return result


def prepare(settings: Settings) -> tuple[Services, BootstrapResult]:
    """Create the data dir (0700, files 0600), migrate, initialize, save the first-start keys."""
    tighten_tree(settings.data_dir)
    if settings.admin_key and key_strength.weakness(settings.admin_key):
        log.warning(
            "FIREBOX_ALLOW_WEAK_ADMIN_KEY: accepting a weak operator key on %s (loopback only); "
            "never use it on a reachable host",
            settings.host,
        )
    services = build_services(settings)
    migrate.upgrade(services.db)
    result = initialize(services)
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
    # Everything built so far (modules, the catalog, the engines' Python objects) lives as
    # long as the process: keep it out of the collector's full passes, which otherwise
    # stop the event loop for tens of milliseconds at random requests (a 66 ms gen-2 pass
    # over a 110k-object heap was measured beside bench/limits.py).
    gc.freeze()
    guard = ConnectionGuard(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_per_client=settings.max_connections_per_client,
        min_body_bytes_per_s=settings.min_upload_bytes_per_s,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # Firebox writes its own structured access log
        lifespan="on",
        # "auto" is uvicorn[standard]'s uvloop where built (not on Windows)
        loop="auto",
        # uvicorn[standard]'s httptools parser, with read deadlines and the per-address
        # cap (firebox/http/connection_guard.py); Firebox serves no WebSockets, and an
        # upgraded connection would leave the guard's count.
        http=guard.protocol_class(),
        ws="none",
        server_header=False,
        # The client, not the server, should be the side that ends an idle connection:
        # if the server's timer fires as a client reuses the connection, the request is
        # lost to a reset (httpx.ReadError). uvicorn's 5 s default equals httpx's idle
        # expiry, and a busy event loop (uvloop runs due timers before reading sockets)
        # widens that race to seconds; see settings.keep_alive_timeout_s.
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # HTTPS when configured (FIREBOX_TLS_CERTFILE / FIREBOX_TLS_KEYFILE).
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
    )
