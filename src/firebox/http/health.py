"""Operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from firebox.http.responses import JSONResponse
from firebox.store import migrate
from firebox.store.database import Database

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about dependencies."""
    return {"status": "ok"}


def _readiness(db: Database) -> tuple[bool, dict[str, str]]:
    try:
        db.ping()
    except Exception as exc:  # any driver error means "not ready"
        return False, {"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"}
    if not migrate.is_current(db):
        return False, {"status": "unavailable", "database": "not migrated to head"}
    return True, {"status": "ok", "database": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: the database answers and is migrated to the code's schema."""
    ok, body = await run_in_threadpool(_readiness, request.app.state.services.db)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = request.app.state.services
    services.metrics.key_cache_entries.set(len(services.key_cache))
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
