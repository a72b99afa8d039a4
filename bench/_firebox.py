"""Firebox as the gateway benchmark runs it: one server per enforcement variant.

A variant is how admission runs: ``off`` (``FIREBOX_ENFORCEMENT=false``: no
rate limit, spend reservation nor suspension check), ``local`` (enforcement
on, SQLite and in-process counters: the embedded mode) or ``redis``
(enforcement on, PostgreSQL in a fresh schema and Redis counters: the
scale-out mode). Every variant is loaded with the key of a member of a normal
account, ``bench``: the operator's key is never limited, so it would measure
nothing. The account gets a payment method, an unlimited spend limit and a
rate limit of 10,000,000 requests a minute, so every check runs on every
request and none refuses; ``probe_enforced`` checks that they ran.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from _procs import Server, free_port, start

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT, USER = "bench", "u"
RATE_LIMIT = 10_000_000  # requests a minute: the check runs, never refuses
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/5"


@dataclass(frozen=True)
class Variant:
    """One way to run Firebox: its target name, label and settings."""

    name: str
    label: str
    enforcement: bool
    scale_out: bool  # PostgreSQL and Redis instead of SQLite and in-process counters
    setup: str  # for the record


VARIANTS = {
    "off": Variant(
        "firebox-off",
        "Firebox (enforcement off)",
        enforcement=False,
        scale_out=False,
        setup="FIREBOX_ENFORCEMENT=false, SQLite, in-process",
    ),
    "local": Variant(
        "firebox",
        "Firebox (enforcement on, in-process)",
        enforcement=True,
        scale_out=False,
        setup="SQLite, in-process counters",
    ),
    "redis": Variant(
        "firebox-redis",
        "Firebox (enforcement on, Redis+PG)",
        enforcement=True,
        scale_out=True,
        setup="PostgreSQL on loopback (a fresh schema), Redis on loopback (its own db)",
    ),
}


@contextmanager
def scale_out_backends(pg_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL schema and an emptied Redis db; the env that points at them.

    The schema is dropped afterwards whatever happens. Runs in this venv,
    which has SQLAlchemy and redis-py (Firebox's own dependencies).
    """
    import redis
    from sqlalchemy import create_engine, text

    from firebox.store.database import normalize_url

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(normalize_url(pg_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
        sep = "&" if "?" in pg_url else "?"
        yield {
            "FIREBOX_DATABASE_URL": f"{pg_url}{sep}options=-csearch_path%3D{schema}",
            "FIREBOX_REDIS_URL": redis_url,
        }
    finally:
        client.flushdb()
        client.close()
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def write_catalog(path: Path, upstream_url: str, upstream_model: str) -> Path:
    """A catalog binding the public model ``llama-8b`` to the upstream."""
    path.write_text(
        f"""\
[[models]]
id = "llama-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
contextLength = 8192
public = true
engine = {{ type = "upstream", urls = ["{upstream_url}"], upstreamModel = "{upstream_model}", \
timeoutS = 30 }}
"""
    )
    return path


def start_firebox(
    name: str,
    catalog: Path,
    work: Path,
    *,
    access_log: bool,
    extra_env: dict[str, str] | None = None,
    src: Path | None = None,
    profile: Path | None = None,
    wrap: Sequence[str] = (),
) -> tuple[Server, str]:
    """Firebox on a free port with its own data dir; returns it and a member's key.

    ``src``: run the ``firebox`` package found there instead of this tree's.
    ``profile``: run it under cProfile, which writes its stats there when it stops.
    ``wrap``: a command line to run the server under (``valgrind --tool=callgrind ...``).
    """
    port = free_port()
    admin_key = "fw_bench_" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    env |= {
        "FIREBOX_ADMIN_KEY": admin_key,
        "FIREBOX_CATALOG_FILE": str(catalog),
        "FIREBOX_ACCESS_LOG": "true" if access_log else "false",
        "FIREBOX_WARM_LOCAL_ENGINES": "false",  # nothing loading in the background
    } | (extra_env or {})
    if src is not None:  # ahead of the editable install's path entry
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    firebox = Path(sys.executable).parent / "firebox"
    argv = [str(firebox), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if profile is not None:
        argv = [sys.executable, str(ROOT / "bench" / "_profiled.py"), str(profile), *argv[1:]]
    argv += ["--data-dir", str(work / f"{name}-data")]
    argv = [*wrap, *argv]
    server = start(
        name,
        argv,
        url=f"http://127.0.0.1:{port}",
        health_path="/healthz",
        log_dir=work,
        env=env,
        timeout_s=600 if wrap else 120,
    )
    try:
        return server, member_key(server.url, admin_key)
    except BaseException:
        print(f"--- last lines of the {name} log ---\n{server.log_tail()}")
        server.stop()
        raise


def member_key(base_url: str, admin_key: str) -> str:
    """Set up account ``bench`` as the operator and return its admin user's new key."""
    headers = {"authorization": f"Bearer {admin_key}"}
    acct = f"/v1/accounts/{ACCOUNT}"
    steps: list[tuple[str, str, dict[str, object]]] = [
        ("POST", f"/v1/accounts?accountId={ACCOUNT}", {}),
        ("POST", f"{acct}/users?userId={USER}", {"role": "admin"}),
        ("POST", f"{acct}/paymentMethods", {"paymentMethod": "pm_card_visa"}),
        ("PATCH", f"{acct}/billing", {"unlimited": True}),
        ("PATCH", acct, {"rateLimitRequestsPerMinute": RATE_LIMIT}),
        ("POST", f"{acct}/users/{USER}/apiKeys", {}),
    ]
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        answer = None
        for method, path, body in steps:
            answer = client.request(method, path, json=body)
            if answer.status_code != 200:
                raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
    assert answer is not None
    key: str = answer.json()["key"]
    return key


def probe_enforced(response: httpx.Response, enforced: bool, name: str) -> None:
    """The member's request went through admission (or did not, with enforcement off)."""
    limit = response.headers.get("x-ratelimit-limit-requests")
    if enforced and limit != str(RATE_LIMIT):
        raise RuntimeError(f"{name}: no rate check ran (x-ratelimit-limit-requests={limit!r})")
    if not enforced and limit is not None:
        raise RuntimeError(f"{name}: enforcement is off, yet a rate check ran ({limit})")


def export_source(rev: str, into: Path) -> Path:
    """``src/`` as of git revision ``rev``, unpacked under ``into`` (the repo is untouched)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "src"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"
