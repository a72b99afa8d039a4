"""Admission cost: rate-limit checks and full ``Enforcement`` admissions per second, and latency.

For each backend (in-process counters; Redis on loopback) and 1 or 4
processes, every process runs its own limiter / Enforcement (as gateway
replicas do; with Redis they share the counters) and calls it in a tight
loop for ``--seconds``:

- ``round trip`` (Redis only): a ``PING`` over the connection admission uses,
  the machine's floor for any Redis call; ``round trip, redis-py``: the same
  through redis-py's asyncio client (with hiredis), which admission used before;
- ``rate check``: ``RateLimiter.hit`` alone (Redis: one Lua call);
- ``admit``: ``Enforcement.admit`` (suspension and plan caches, rate limit,
  spend reservation; Redis: one Lua call, ``ADMIT``), then ``settle`` (timed apart).

Each process runs on uvloop, as the gateway does. Latency is per call
(perf_counter_ns), p50 / p99 over every call of every process. With Redis,
each account's counter starts with a full minute of buckets, as a busy
account's has. Prints a table and records it under "## Limits" in
docs/benchmarks.md (replacing the previous record of this script).

    .venv/bin/python bench/limits.py --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import platform
import re
import sys
import tempfile
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
    uvloop = None

from firebox.accounts.models import AccountRow  # noqa: E402
from firebox.accounts.principal import Principal  # noqa: E402
from firebox.accounts.roles import Role  # noqa: E402
from firebox.clock import SystemClock  # noqa: E402
from firebox.inference.admission import Demand  # noqa: E402
from firebox.inference.metering import UsageRecord  # noqa: E402
from firebox.limits.admission import Enforcement  # noqa: E402
from firebox.limits.changes import TRUSTED_PLAN_TTL_S, TRUSTED_SUSPENSION_TTL_S  # noqa: E402
from firebox.limits.hooks import SuspensionHooks  # noqa: E402
from firebox.limits.models import AccountLimitsRow  # noqa: E402
from firebox.limits.plans import PlanLimits  # noqa: E402
from firebox.limits.ports import SpendState  # noqa: E402
from firebox.limits.rate_limiter import (  # noqa: E402
    InProcessRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from firebox.limits.redis_spend_guard import RedisSpendGuard  # noqa: E402
from firebox.limits.redis_wire import ScriptClient  # noqa: E402
from firebox.limits.spend_guard import InProcessSpendGuard, SpendGuard  # noqa: E402
from firebox.limits.suspension import SuspensionService  # noqa: E402
from firebox.store import migrate  # noqa: E402
from firebox.store.database import Database  # noqa: E402

ACCOUNTS = [f"bench-{i}" for i in range(16)]
LIMIT = 10**12  # never refuses: we measure the check, not refusals
HEADING = "## Limits"
BEGIN, END = "<!-- limits:run -->", "<!-- /limits:run -->"


class Money:
    """Unlimited spend, 1 micro-USD per token."""

    def spend_state(self, account_id: str) -> SpendState:
        return SpendState(account_id, datetime.now(UTC).strftime("%Y-%m"), 0, None, 0, True, False)

    def cost(self, usage: UsageRecord) -> int:
        return usage.prompt_tokens + usage.completion_tokens

    def worst_case_cost(self, demand: Demand) -> int:
        return demand.prompt_tokens + demand.completion_tokens


def _limiter(redis_url: str | None, clock: SystemClock, prefix: str) -> RateLimiter:
    if redis_url is None:
        return InProcessRateLimiter(clock)
    return RedisRateLimiter(redis_url, clock, InProcessRateLimiter(clock), 1, key_prefix=prefix)


async def _run(what: str, redis_url: str | None, db_url: str, seconds: float) -> dict[str, bytes]:
    clock = SystemClock()
    prefix = f"bench:{os.getpid()}:" if what == "none" else "bench:"
    limiter = _limiter(redis_url, clock, prefix + "rate:")
    times: dict[str, array[int]] = {"call": array("q"), "settle": array("q")}
    gc.freeze()  # as the gateway does once started (firebox.server.serve)
    deadline = time.perf_counter() + seconds
    n = 0
    if what == "round trip":  # the floor: one PING over the same connection admission uses
        assert redis_url is not None
        wire = ScriptClient(redis_url, timeout_s=1.0, connect_timeout_s=1.0)
        while time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            await wire.execute("PING")
            times["call"].append(time.perf_counter_ns() - start)
        await wire.aclose()
    elif what == "round trip, redis-py":  # the same PING through redis-py's asyncio client
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url or "", socket_timeout=1.0)
        while time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            await client.ping()
            times["call"].append(time.perf_counter_ns() - start)
        await client.aclose()
    elif what == "rate check":
        while time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            await limiter.hit(ACCOUNTS[n % len(ACCOUNTS)], LIMIT)
            times["call"].append(time.perf_counter_ns() - start)
            n += 1
    else:
        db = Database(db_url)
        money = Money()
        guard: SpendGuard = (
            RedisSpendGuard(redis_url, money, clock, key_prefix=prefix)
            if redis_url
            else InProcessSpendGuard(money, clock)
        )
        # Cache lifetimes as a gateway has them while its change channel is up (one
        # process, or Redis): changes are announced, so entries live long.
        plans = PlanLimits(db, clock, trusted=lambda: True, trusted_ttl_s=TRUSTED_PLAN_TTL_S)
        suspension = SuspensionService(
            db,
            clock,
            money,
            SuspensionHooks(),
            trusted=lambda: True,
            trusted_ttl_s=TRUSTED_SUSPENSION_TTL_S,
        )
        enforcement = Enforcement(plans, limiter, guard, suspension, money, clock)
        while time.perf_counter() < deadline:
            account = ACCOUNTS[n % len(ACCOUNTS)]
            principal = Principal(account, "u", 1, Role.USER, "k", "h")
            demand = Demand(f"r{n}", account, "chat", "m", "m", None, None, 10, 100)
            start = time.perf_counter_ns()
            ticket = await enforcement.admit(principal, demand)
            mid = time.perf_counter_ns()
            await ticket.settle(
                UsageRecord(f"r{n}", account, "m", "m", "chat", clock.now(), 10, 50)
            )
            times["call"].append(mid - start)
            times["settle"].append(time.perf_counter_ns() - mid)
            n += 1
        db.dispose()
    return {k: v.tobytes() for k, v in times.items()}


def _worker(what: str, redis_url: str | None, db_url: str, seconds: float, out: mp.Queue) -> None:
    try:
        # The gateway's loop: uvicorn runs uvloop where it is installed (it is with Firebox).
        runner = getattr(uvloop, "run", asyncio.run) if uvloop is not None else asyncio.run
        out.put(runner(_run(what, redis_url, db_url, seconds)))
    except BaseException as exc:
        out.put({"error": repr(exc).encode()})
        raise


def _pct(sorted_ns: array[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def measure(what: str, redis_url: str | None, db_url: str, procs: int, seconds: float) -> list[str]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(what, redis_url, db_url, seconds, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    for r in results:
        if "error" in r:
            raise SystemExit(f"a worker failed: {r['error'].decode()}")
    rows = []
    backend = "redis" if redis_url else "in-process"
    for key, label in (("call", what), ("settle", "settle")):
        merged: array[int] = array("q")
        for r in results:
            merged.frombytes(r[key])
        if not merged:
            continue
        ordered = array("q", sorted(merged))
        rate = len(ordered) / seconds
        rows.append(
            f"| {backend} | {procs} | {label} | {rate:,.0f} | "
            f"{_pct(ordered, 0.5):.1f} | {_pct(ordered, 0.99):.1f} |"
        )
    return rows


def _database(path: Path) -> str:
    url = f"sqlite:///{path}"
    db = Database(url)
    migrate.upgrade(db)
    now = datetime.now(UTC)
    with db.transaction() as session:
        for account in ACCOUNTS:
            session.add(AccountRow(id=account, plan="BUSINESS", create_time=now, update_time=now))
            session.flush()
            session.add(
                AccountLimitsRow(account_id=account, requests_per_minute=10**9, update_time=now)
            )
    db.dispose()
    return url


def _fill_windows(redis_url: str) -> None:
    """Give every account's request counter a full minute of buckets, as steady traffic does.

    A run of a few seconds would otherwise measure windows of a few buckets,
    which are cheaper for Redis than the 60 a busy account keeps.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    now = int(time.time())
    for account in ACCOUNTS:
        key = f"bench:rate:{account}"
        client.delete(key)
        client.hset(key, mapping={str(sec): 1 for sec in range(now - 59, now + 1)})
        client.expire(key, 300)
    client.close()


def script_cost(redis_url: str, calls: int = 3000) -> str:
    """Redis's own time per call of the two admission scripts, on a full window.

    From ``INFO commandstats`` (``cmdstat_evalsha``) before and after ``calls``
    calls, so the client and the network are left out: what the server spends.
    """
    import redis

    from firebox.limits.redis_scripts import ADMIT, SLIDING_WINDOW

    client = redis.Redis.from_url(redis_url)
    now = int(time.time())
    key, spend = "bench:script-cost:rate", "bench:script-cost:{spend}"
    parts = []
    for name, source in (("sliding window", SLIDING_WINDOW), ("ADMIT", ADMIT)):
        client.delete(key, spend, spend + ":res")
        client.hset(key, mapping={str(sec): 1 for sec in range(now - 59, now + 1)})
        script = client.register_script(source)

        def call(i: int, script: Any = script, name: str = name) -> None:
            if name == "ADMIT":
                ms = now * 1000
                args = [0, 0, 1, -1, ms, ms + 60_000, f"r{i}", 600, 1, now, 60, 120, LIMIT, 1]
                script(keys=[spend, spend + ":res", key], args=args)
            else:
                script(keys=[key], args=[now, LIMIT, 1, 60, 120, 1])

        call(-1)  # loaded, and the old-layout window converted
        before = client.info("commandstats")["cmdstat_evalsha"]
        for i in range(calls):
            call(i)
        after = client.info("commandstats")["cmdstat_evalsha"]
        per_call = (after["usec"] - before["usec"]) / (after["calls"] - before["calls"])
        parts.append(f"{name} {per_call:.1f} µs")
    client.delete(key, spend, spend + ":res")
    client.close()
    return ", ".join(parts)


def _clean(redis_url: str) -> None:
    """Delete the counters the run left in Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("bench:*"):
        client.delete(key)
    client.close()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    return f"{cpu}, {cores} cores (shared with other work), Python {platform.python_version()}"


def record(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    wrapped = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text:
        text = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: wrapped, text, flags=re.S
        )
    elif HEADING in text:
        text = text.replace(HEADING, f"{HEADING}\n\n{wrapped}", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{wrapped}\n"
    doc.write_text(text)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--redis",
        default=os.environ.get("FIREBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis to measure against; skipped with a note when it does not answer",
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.redis and not _redis_answers(args.redis):
        print(f"Redis at {args.redis} does not answer: measuring the in-process backend only")
        args.redis = None
    backends: list[str | None] = [None] + ([args.redis] if args.redis else [])
    started = time.time()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        db_url = _database(Path(tmp) / "bench.db")
        for redis_url in backends:
            for procs in (1, 4):
                floor = ("round trip", "round trip, redis-py") if redis_url else ()
                for what in (*floor, "rate check", "admit"):
                    if redis_url:
                        _fill_windows(redis_url)
                    rows += measure(what, redis_url, db_url, procs, args.seconds)
                    print(rows[-1] if what != "admit" else "\n".join(rows[-2:]), flush=True)
    cost = script_cost(args.redis) if args.redis else None
    command = ".venv/bin/python bench/limits.py" + (f" --redis {args.redis}" if args.redis else "")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    block = "\n".join(
        [
            f"### Latest run ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
            "",
            f"- Machine: {_machine()}; load average after: {load}",
            f"- Command: `{command}`",
            f"- {args.seconds:g} s per cell, every call timed; took {time.time() - started:.0f} s",
            *(
                [f"- Redis time per script call, full window (INFO commandstats): {cost}"]
                if cost
                else []
            ),
            "",
            "| backend | processes | call | calls/s (all processes) | p50 µs | p99 µs |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(block)
    if args.redis:
        _clean(args.redis)
    if not args.no_record:
        record(ROOT / "docs" / "benchmarks.md", block)


if __name__ == "__main__":
    main()
