"""How fast usage records reach the ledger durably, and what ``record()`` costs a request.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, database ``test``)::

    .venv/bin/python bench/ledger_ingest.py                 # 200k records a case, ~2 min
    .venv/bin/python bench/ledger_ingest.py --records 50000 --no-record

Cases: (a) SQLite, one writer; (b) PostgreSQL, one writer; (c) PostgreSQL,
``--writers`` processes (default 4) at once, each with its own ``UsageIngest``
and spool, over the same accounts (so their billing-row locks contend, as
replicas' do). Each writer records its share as fast as it can through
``UsageIngest.record`` (priced, spooled, queued: the request path), then
waits for ``flush``; records/s is all records over the time from the first
``record`` to the last commit. The queue holds every record (no
back-pressure), so the ``record()`` percentiles are its own cost while the
writer thread runs beside it. The prebuilt input records are frozen out of
the garbage collector (``gc.freeze``): a live server never holds 200k of them.
"apply" is the share of that time spent inside ``Ledger.apply``. Every
account has a credit grant, so each record also consumes credits. Figures
go to ``docs/benchmarks.md`` under "Ledger ingest".
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import platform
import re
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from firebox.accounts.models import AccountRow
from firebox.billing.events import NoListener
from firebox.billing.ingest import UsageIngest
from firebox.billing.ledger import Ledger
from firebox.billing.models import BillingAccountRow, CreditGrantRow
from firebox.billing.overrides import NoOverrides
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import PricedUsage, Pricer
from firebox.clock import SystemClock
from firebox.inference.metering import UsageRecord
from firebox.store import migrate
from firebox.store.database import Database, normalize_url

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Ledger ingest"
MARK = "ledger-ingest:latest"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_RPS = 20_000
TARGET_P99_MS = 0.1


@dataclass
class WriterResult:
    records: int
    start: float  # time.time() of the first record()
    end: float  # time.time() when flush returned
    latencies_ns: list[int]
    apply_s: float
    batches: int
    written: int
    flushed: bool


@dataclass
class CaseResult:
    name: str
    writers: list[WriterResult]

    @property
    def records(self) -> int:
        return sum(w.records for w in self.writers)

    @property
    def seconds(self) -> float:
        return max(w.end for w in self.writers) - min(w.start for w in self.writers)

    @property
    def rps(self) -> float:
        return self.records / self.seconds

    def pct_ms(self, q: float) -> float:
        values = sorted(v for w in self.writers for v in w.latencies_ns)
        return values[min(len(values) - 1, int(q * len(values)))] / 1e6

    @property
    def apply_share(self) -> float:
        return statistics.mean(w.apply_s / (w.end - w.start) for w in self.writers)

    @property
    def batch_ms(self) -> float:
        return (
            1000
            * sum(w.apply_s for w in self.writers)
            / max(sum(w.batches for w in self.writers), 1)
        )


class TimedLedger:
    """The real ledger, timing each ``apply``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.seconds = 0.0
        self.batches = 0

    def apply(self, batch: Sequence[PricedUsage]) -> int:
        started = time.perf_counter()
        try:
            return self.ledger.apply(batch)
        finally:
            self.seconds += time.perf_counter() - started
            self.batches += 1


def account_ids(count: int) -> list[str]:
    return [f"bench-{i:04d}" for i in range(count)]


def seed(db: Database, accounts: list[str]) -> None:
    """Accounts with billing rows and one large credit grant each."""
    now = datetime.now(UTC)
    period = f"{now.year:04d}-{now.month:02d}"
    with db.transaction() as session:
        for a in accounts:
            session.add(AccountRow(id=a, display_name=a, create_time=now, update_time=now))
        session.flush()
        for a in accounts:
            session.add(
                BillingAccountRow(
                    account_id=a,
                    period=period,
                    period_usage_micros=0,
                    credit_balance_micros=10**12,
                    historical_spend_micros=0,
                    tier=1,
                    unlimited=True,
                    deployment_discount_bps=0,
                    failed_invoices=0,
                    create_time=now,
                    update_time=now,
                )
            )
            session.add(
                CreditGrantRow(
                    id=f"g-{a}",
                    account_id=a,
                    source="OPERATOR",
                    amount_micros=10**12,
                    remaining_micros=10**12,
                    reason="bench",
                    reference=f"bench:{a}",
                    create_time=now,
                )
            )


def make_records(prefix: str, n: int, accounts: list[str]) -> list[UsageRecord]:
    now = datetime.now(UTC)
    model = "accounts/fireworks/models/llama-v3p1-8b-instruct"
    return [
        UsageRecord(
            request_id=f"{prefix}-{i}",
            account_id=accounts[i % len(accounts)],
            model=model,
            base_model=model,
            kind="chat",
            time=now,
            prompt_tokens=100 + i % 400,
            completion_tokens=20 + i % 200,
            duration_ms=123.0,
            price_class="TEXT_DENSE_UP_TO_16B",
        )
        for i in range(n)
    ]


def run_writer(
    url: str,
    connect_args: dict[str, Any],
    spool_dir: str,
    prefix: str,
    n: int,
    accounts: list[str],
    batch_size: int,
    go: Any = None,
) -> WriterResult:
    """One writer: its own database handle, ledger, ingest and spool."""
    db = Database(url, connect_args=connect_args)
    ledger = TimedLedger(Ledger(db, SystemClock(), NoListener()))
    pricer = Pricer(PriceBook.load(), NoOverrides())
    ingest = UsageIngest(pricer, ledger, Path(spool_dir), batch_size=batch_size, queue_limit=n + 1)
    ingest.start()
    records = make_records(prefix, n, accounts)
    latencies = [0] * n
    gc.collect()
    gc.freeze()  # the prebuilt input is not the system's: keep it out of every GC pass
    if go is not None:
        go.wait()
    clock = time.perf_counter_ns
    start = time.time()
    for i, record in enumerate(records):
        before = clock()
        ingest.record(record)
        latencies[i] = clock() - before
    flushed = ingest.flush(600)
    end = time.time()
    ingest.close()
    db.dispose()
    return WriterResult(
        n, start, end, latencies, ledger.seconds, ledger.batches, ingest.written, flushed
    )


def _writer_process(args: tuple[Any, ...], go: Any, results: Any) -> None:
    results.put(run_writer(*args, go=go))


def run_parallel(args: list[tuple[Any, ...]]) -> list[WriterResult]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(a, go, results)) for a in args]
    for p in procs:
        p.start()
    time.sleep(3)  # each imports, connects and builds its records before the start signal
    go.set()
    out = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(30)
    return out


def pg_schema(url: str) -> tuple[str, dict[str, Any]]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return schema, {"options": f"-csearch_path={schema}"}


def drop_schema(url: str, schema: str) -> None:
    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def run_case(
    name: str,
    url: str,
    connect_args: dict[str, Any],
    work: Path,
    args: argparse.Namespace,
    writers: int,
) -> CaseResult:
    db = Database(url, connect_args=connect_args)
    migrate.upgrade(db)
    accounts = account_ids(args.accounts)
    seed(db, accounts)
    db.dispose()
    share = args.records // writers
    jobs = []
    for w in range(writers):
        spool = work / f"spool-{name.replace(' ', '_')}-{w}"
        jobs.append(
            (
                url,
                connect_args,
                str(spool),
                f"{uuid.uuid4().hex[:8]}-{w}",
                share,
                accounts,
                args.batch_size,
            )
        )
    results = [run_writer(*jobs[0])] if writers == 1 else run_parallel(jobs)
    for r in results:
        if not r.flushed or r.written != r.records:
            raise RuntimeError(f"{name}: wrote {r.written} of {r.records} (flushed={r.flushed})")
    return CaseResult(name, results)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def pg_version(url: str) -> str:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        version = str(conn.execute(text("SHOW server_version")).scalar())
    engine.dispose()
    return version


def table(cases: list[CaseResult]) -> list[str]:
    lines = [
        "| case | records | seconds | records/s | record() p50 ms | p99 ms | p99.9 ms "
        "| apply share | ms per batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.name} | {c.records:,} | {c.seconds:.1f} | {c.rps:,.0f} | {c.pct_ms(0.5):.3f} "
            f"| {c.pct_ms(0.99):.3f} | {c.pct_ms(0.999):.3f} | {c.apply_share:.0%} "
            f"| {c.batch_ms:.1f} |"
        )
    return lines


def reading(cases: list[CaseResult]) -> str:
    parts = []
    pg = [c for c in cases if c.name.startswith("PostgreSQL")]
    if pg:
        best = max(pg, key=lambda c: c.rps)
        met = "met" if best.rps >= TARGET_RPS else "missed"
        parts.append(
            f"PostgreSQL best {best.rps:,.0f} records/s ({best.name}; "
            f"target ≥ {TARGET_RPS:,}: {met})"
        )
    worst = max(c.pct_ms(0.99) for c in cases)
    met = "met" if worst <= TARGET_P99_MS else "missed"
    parts.append(f"record() p99 at most {worst:.3f} ms (target ≤ {TARGET_P99_MS} ms: {met})")
    return "; ".join(parts) + "."


def record_doc(lines: list[str]) -> None:
    text_ = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"<!-- {MARK} -->\n" + "\n".join(lines).strip("\n") + f"\n<!-- /{MARK} -->"
    if f"<!-- {MARK} -->" in text_:
        text_ = re.sub(
            rf"<!-- {MARK} -->.*?<!-- /{MARK} -->", lambda _: block, text_, flags=re.DOTALL
        )
    else:
        intro = "Written by `bench/ledger_ingest.py` (see its docstring for the method)."
        text_ = text_.rstrip("\n") + f"\n\n{HEADING}\n\n{intro}\n\n{block}\n"
    DOC.write_text(text_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per case")
    parser.add_argument("--writers", type=int, default=4, help="processes in case (c)")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument(
        "--pg-url", default=os.environ.get("FIREBOX_BENCH_DATABASE_URL", DEFAULT_PG)
    )
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not touch docs/")
    args = parser.parse_args()
    cases: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="firebox-ledger-bench-") as tmp:
        work = Path(tmp)
        sqlite_url = f"sqlite:///{work / 'ledger.db'}"
        cases.append(run_case("SQLite, 1 writer", sqlite_url, {}, work, args, 1))
        print(table(cases)[-1], flush=True)
        if not args.skip_pg:
            for name, writers in (
                ("PostgreSQL, 1 writer", 1),
                (f"PostgreSQL, {args.writers} writer processes", args.writers),
            ):
                schema, connect_args = pg_schema(args.pg_url)
                try:
                    cases.append(run_case(name, args.pg_url, connect_args, work, args, writers))
                finally:
                    drop_schema(args.pg_url, schema)
                print(table(cases)[-1], flush=True)
    facts = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {_cpu_model()}, {os.cpu_count()} cores",
        "",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
        + ("" if args.skip_pg else f", PostgreSQL {pg_version(args.pg_url)}")
        + f"; {args.accounts} accounts with credits, batches of up to {args.batch_size}, no fsync.",
        "",
    ]
    lines = [*facts, *table(cases), "", f"Reading: {reading(cases)}"]
    print("\n".join(lines))
    if not args.no_record:
        record_doc(lines)


if __name__ == "__main__":
    main()
