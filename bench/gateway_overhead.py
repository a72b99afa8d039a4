"""What a gateway adds to each request: Firebox and LiteLLM in front of one fast upstream.

Run from the repository root (it needs Debian's ``wrk``)::

    .venv/bin/python bench/gateway_overhead.py            # full: ~12 min
    .venv/bin/python bench/gateway_overhead.py --quick    # ~3 s a measurement: ~5 min

It starts on 127.0.0.1 the fake vLLM-shaped upstream (no token delay, so the
gateways' own cost dominates), one Firebox per enforcement variant pointed at
it, and the LiteLLM proxy (one worker) pointed at it; then, for each stream
mode and concurrency, it loads the upstream directly, each Firebox and
LiteLLM one after the other (a warm-up, then a fixed duration), prints
requests/s, p50 and p99, the latency each gateway adds over the upstream and
the ratios between them, and records them in ``docs/benchmarks.md`` under
"Gateway overhead". Every process it starts is stopped when it ends, fails or
runs past ``--time-limit``.

``--enforcement`` (default ``off,local,redis``: all three) picks the Firebox
variants (see ``_firebox.py``): ``off`` is ``FIREBOX_ENFORCEMENT=false``;
``local`` is enforcement on with SQLite and in-process counters; ``redis`` is
enforcement on with PostgreSQL (a fresh schema in ``--pg-url``, default
``postgresql://postgres@127.0.0.1:5432/test``, dropped at the end) and Redis
(``--redis-url``, default ``redis://127.0.0.1:6379/5``, flushed before and
after). Each is called with a member's key of a normal account whose checks
all run and never refuse. A non-2xx answer from any target is counted,
shown, and makes the script exit with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _firebox
import _litellm
import _wrk
import httpx
from _firebox import VARIANTS
from _procs import Server, TimeLimitReached, free_port, start, time_limit
from _report import BASELINE, DIRECT, LITELLM, Cell, Figures, Run, print_table, record

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "support" / "fake_upstream.py"
UPSTREAM_MODEL = "fake-model"
MAX_TOKENS = 16
PROMPT = "Write one short sentence about benchmarks."
CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Target:
    """One server under load: where to POST, as which model, with which key."""

    name: str
    label: str
    url: str  # the chat completions URL
    model: str
    token: str | None
    enforced: bool | None = None  # Firebox: whether admission runs; None: not Firebox


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s measurements, 1 s warm-ups")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the matrix; medians kept")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="connections"
    )
    parser.add_argument("--threads", type=int, default=1, choices=(1, 2), help="wrk threads")
    parser.add_argument("--skip-litellm", action="store_true", help="no LiteLLM (no ratios)")
    parser.add_argument(
        "--enforcement",
        default="off,local,redis",
        help="Firebox variants, comma-separated: off, local (in-process), redis (Redis+PG)",
    )
    parser.add_argument("--pg-url", default=_firebox.PG_URL, help="PostgreSQL for 'redis'")
    parser.add_argument("--redis-url", default=_firebox.REDIS_URL, help="Redis db for 'redis'")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run Firebox as of git revision REV (e.g. HEAD), side by side: before/after",
    )
    parser.add_argument(
        "--baseline-variant",
        choices=("local", "redis"),
        default="local",
        help="how the --baseline server runs: local (in-process) or redis (Redis+PG, its own "
        "schema and Redis db)",
    )
    parser.add_argument(
        "--firebox-access-log",
        choices=("on", "off"),
        default="on",
        help="Firebox's JSON access log (on: its default, written to a log file)",
    )
    parser.add_argument("--time-limit", type=float, help="stop everything after this many s")
    parser.add_argument("--no-record", action="store_true", help="do not touch docs/")
    parser.add_argument("--keep-logs", type=Path, help="keep the servers' logs in this folder")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.enforcement.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--enforcement: pick from {', '.join(VARIANTS)} (got {unknown or 'none'})")
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    targets = 1 + len(args.variants) + (not args.skip_litellm) + bool(args.baseline)
    cells = 2 * len(args.concurrency) * args.rounds * targets
    per_cell = args.duration + args.warmup + 15  # wrk's start and a slack for timeouts
    args.time_limit = args.time_limit or cells * per_cell + 600
    return args


def chat_body(model: str, stream: bool) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": stream}


def probe(target: Target) -> None:
    """One request each way: the target answers the whole, correct completion."""
    headers = {"authorization": f"Bearer {target.token}"} if target.token else {}
    last = f"tok{MAX_TOKENS - 1}"
    with httpx.Client(timeout=30, headers=headers) as client:
        plain = client.post(target.url, json=chat_body(target.model, stream=False))
        if plain.status_code != 200 or last not in plain.text:
            raise RuntimeError(f"{target.name}: {plain.status_code} {plain.text[:500]}")
        streamed = client.post(target.url, json=chat_body(target.model, stream=True))
        text = streamed.text
        if streamed.status_code != 200 or last not in text or "data: [DONE]" not in text:
            raise RuntimeError(f"{target.name} (stream): {streamed.status_code} {text[:500]}")
    if target.enforced is not None:
        for answer in (plain, streamed):
            _firebox.probe_enforced(answer, target.enforced, target.name)


def start_upstream(log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(FAKE), "--port", str(port), "--model", UPSTREAM_MODEL]
    return start(
        "upstream",
        argv,
        url=f"http://127.0.0.1:{port}",
        health_path="/v1/models",
        log_dir=log_dir,
        cwd=ROOT,
    )


def settle(target: Target) -> str:
    """Wait until the requests wrk left in flight are done: one more request, answered.

    Returns that answer's status and the start of its body (shown when wrk saw errors).
    """
    headers = {"authorization": f"Bearer {target.token}"} if target.token else {}
    try:
        answer = httpx.post(
            target.url, json=chat_body(target.model, False), headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"{answer.status_code} {answer.text[:300]}"


def measure_one(
    args: argparse.Namespace, wrk: str, target: Target, script: Path, connections: int
) -> Figures:
    """A warm-up, then the measurement; the target is idle again when this returns."""
    common = {"connections": connections, "threads": args.threads}
    if args.warmup > 0:
        _wrk.run(wrk, target.url, script, duration_s=args.warmup, **common)
        settle(target)
    before = admission_sums(target) if target.enforced else None
    got = _wrk.run(wrk, target.url, script, duration_s=args.duration, **common)
    after = settle(target)
    if before is not None:
        admit, count, request = (b - a for a, b in zip(before, admission_sums(target), strict=True))
        if count and request:
            key = (script.stem.endswith("-stream"), connections, target.name)
            ADMISSION[key] = (admit / count * 1e6, admit / request)
    if got.errors:
        print(
            f"  !! {target.label}: {got.errors} requests failed (non-2xx, socket errors or "
            f"timeouts); one request after the run answered: {after}",
            file=sys.stderr,
            flush=True,
        )
    return Figures(got.rps, got.p50_ms, got.p99_ms, got.errors)


def measure(args: argparse.Namespace, wrk: str, targets: list[Target], scripts: Path) -> list[Cell]:
    """Every cell, each target in turn within it, ``--rounds`` times; medians kept."""
    rounds: dict[tuple[bool, int, str], list[Figures]] = {}
    for round_no in range(args.rounds):
        for stream in (False, True):
            for connections in args.concurrency:
                for target in targets:
                    script = scripts / f"{target.name}-{'stream' if stream else 'plain'}.lua"
                    if not script.exists():
                        _wrk.write_script(script, chat_body(target.model, stream), target.token)
                    got = measure_one(args, wrk, target, script, connections)
                    rounds.setdefault((stream, connections, target.name), []).append(got)
                    p50, p99 = (
                        f"{v:7.2f}" if v is not None else "      —"
                        for v in (got.p50_ms, got.p99_ms)
                    )
                    print(
                        f"  round {round_no + 1} {'stream' if stream else 'plain '} "
                        f"c={connections:<3} {target.label:<36} {got.rps:8,.0f} req/s  "
                        f"p50 {p50} ms  p99 {p99} ms"
                        + (f"  {got.errors} errors" if got.errors else ""),
                        flush=True,
                    )
    cells = []
    for stream in (False, True):
        for connections in args.concurrency:
            cell = Cell(stream, connections)
            for target in targets:
                cell.targets[target.name] = Figures.median(
                    rounds[(stream, connections, target.name)]
                )
            cells.append(cell)
    return cells


def _output(argv: list[str], cwd: Path = ROOT) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores shared with other work (expect noise)"


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def start_targets(
    args: argparse.Namespace, work: Path, servers: list[Server], stack: contextlib.ExitStack
) -> list[Target]:
    """Start every server (each added to ``servers`` at once, for the caller to stop).

    ``stack`` holds the scale-out backends (schema and Redis db), released after.
    """
    upstream = start_upstream(work)
    servers.append(upstream)
    print(f"upstream (fake) on {upstream.url}", flush=True)
    access_log, model = args.firebox_access_log == "on", "accounts/firebox/models/llama-8b"
    targets = [Target(DIRECT, "upstream (direct)", upstream.url + CHAT, UPSTREAM_MODEL, None)]
    catalog = _firebox.write_catalog(work / "catalog.toml", upstream.url + "/v1", UPSTREAM_MODEL)
    for name in args.variants:
        variant = VARIANTS[name]
        env = {"FIREBOX_ENFORCEMENT": "true" if variant.enforcement else "false"}
        if variant.scale_out:
            env |= stack.enter_context(_firebox.scale_out_backends(args.pg_url, args.redis_url))
        server, key = _firebox.start_firebox(
            variant.name, catalog, work, access_log=access_log, extra_env=env
        )
        servers.append(server)
        print(f"{variant.label} on {server.url}", flush=True)
        url = server.url + "/inference" + CHAT
        targets.append(Target(variant.name, variant.label, url, model, key, variant.enforcement))
    if args.baseline:
        src = _firebox.export_source(args.baseline, work / "baseline")
        env = {"FIREBOX_ENFORCEMENT": "true"}
        label = f"Firebox @{args.baseline}"
        if args.baseline_variant == "redis":
            redis_url = _other_redis_db(args.redis_url)
            env |= stack.enter_context(_firebox.scale_out_backends(args.pg_url, redis_url))
            label += " (Redis+PG)"
        base, base_key = _firebox.start_firebox(
            "baseline", catalog, work, access_log=access_log, src=src, extra_env=env
        )
        servers.append(base)
        print(f"{label} on {base.url}", flush=True)
        targets.append(Target(BASELINE, label, base.url + "/inference" + CHAT, model, base_key))
    if not args.skip_litellm:
        config = _litellm.write_config(
            work / "litellm.yaml",
            model="llama-8b",
            upstream_model=UPSTREAM_MODEL,
            upstream_url=upstream.url + "/v1",
        )
        print("starting the LiteLLM proxy (it takes a while to import)...", flush=True)
        proxy = _litellm.start_proxy(_litellm.VENV / "bin" / "litellm", config, work)
        servers.append(proxy)
        print(f"LiteLLM on {proxy.url}", flush=True)
        targets.append(
            Target(LITELLM, "LiteLLM", proxy.url + CHAT, "llama-8b", _litellm.MASTER_KEY)
        )
    return targets


def _other_redis_db(url: str) -> str:
    """``url`` with the next Redis db number, so a baseline never shares the variant's counters."""
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + 1}" if db.isdigit() or not db else url + "1"


def admission_sums(target: Target) -> tuple[float, float, float]:
    """(admission seconds, admissions, chat route seconds) so far, from the target's /metrics."""
    base = target.url.removesuffix("/inference" + CHAT)
    admit = count = request = 0.0
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "firebox_admission_duration_seconds_sum":
            admit += float(value)
        elif name == "firebox_admission_duration_seconds_count":
            count += float(value)
        elif name.startswith("firebox_http_request_duration_seconds_sum") and CHAT in name:
            request += float(value)
    return admit, count, request


# (stream, connections, target name) -> (mean admission µs, share of the request's time)
ADMISSION: dict[tuple[bool, int, str], tuple[float, float]] = {}


def admission_report(targets: list[Target], concurrency: list[int]) -> str:
    """Per enforcing variant and cell: mean ``Enforcement.admit`` time and its share.

    Server-side, over each measurement (warm-ups excluded): the time admission
    took, against the time the chat route took from the request's start to the
    answer's last byte. At concurrency 1 that is admission's own cost; under
    load it includes waiting for the event loop, which every await there pays.
    """
    parts = []
    for target in targets:
        cells = []
        for stream in (False, True):
            for c in concurrency:
                got = ADMISSION.get((stream, c, target.name))
                if got is not None:
                    mode = "stream" if stream else "plain"
                    cells.append(f"{mode} c={c} {got[0]:.0f} µs ({got[1]:.1%})")
        if cells:
            parts.append(f"{target.label}: " + ", ".join(cells))
    return "; ".join(parts) or "no enforcing variant ran"


def _other_redis_db(url: str) -> str:
    """``url`` with the next Redis db number, so a baseline never shares the variant's counters."""
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + 1}" if db.isdigit() or not db else url + "1"


def admission_shares(targets: list[Target]) -> str:
    """Each enforcing Firebox's admission time against its request time, from its /metrics.

    Server-side sums over the whole run (warm-ups included): the mean time
    ``Enforcement.admit`` took, and its share of the time the chat route took
    from the request's start to the answer's last byte.
    """
    parts = []
    for target in targets:
        if not target.enforced:
            continue
        base = target.url.removesuffix("/inference" + CHAT)
        sums: dict[str, float] = {"admit": 0.0, "count": 0.0, "request": 0.0}
        for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == "firebox_admission_duration_seconds_sum":
                sums["admit"] += float(value)
            elif name == "firebox_admission_duration_seconds_count":
                sums["count"] += float(value)
            elif name.startswith("firebox_http_request_duration_seconds_sum") and CHAT in name:
                sums["request"] += float(value)
        if sums["count"] and sums["request"]:
            mean_us = sums["admit"] / sums["count"] * 1e6
            share = sums["admit"] / sums["request"]
            parts.append(f"{target.label}: {mean_us:.0f} µs a request, {share:.1%} of its time")
    return "; ".join(parts) or "no enforcing variant ran"


def run_servers(
    args: argparse.Namespace, wrk: str, work: Path
) -> tuple[list[Cell], dict[str, str]]:
    """Start the servers, check each answers, measure; stop them whatever happens."""
    servers: list[Server] = []
    with contextlib.ExitStack() as stack:
        try:
            targets = start_targets(args, work, servers, stack)
            for target in targets:
                probe(target)
            print("all targets answer (and enforce as configured); measuring", flush=True)
            cells = measure(args, wrk, targets, work)
            args.admission_shares = admission_report(targets, args.concurrency)
            return cells, {t.name: t.label for t in targets}
        except BaseException:
            for server in servers:
                print(f"--- last lines of the {server.name} log ---\n{server.log_tail()}")
            raise
        finally:
            for server in reversed(servers):
                server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = _wrk.find_wrk()
    if wrk is None:
        print(_wrk.INSTALL_HINT, file=sys.stderr)
        return 2
    litellm_version = "not run"
    if not args.skip_litellm:
        _litellm.ensure_venv()  # before the time limit: the first install takes minutes
        litellm_version = _litellm.version()
    started = time.monotonic()
    before = loadavg()
    with tempfile.TemporaryDirectory(prefix="firebox-bench-") as tmp:
        work = Path(tmp)
        try:
            with time_limit(args.time_limit):
                cells, labels = run_servers(args, wrk, work)
        except TimeLimitReached as exc:
            print(f"stopped: {exc}; every server it started is stopped", file=sys.stderr)
            return 1
        finally:
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in work.glob("*.log"):
                    (args.keep_logs / log.name).write_bytes(log.read_bytes())
    facts = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "Machine": machine(),
        "Load average (1/5/15 min)": f"before {before}, after {loadavg()}",
        "Versions": (
            f"Firebox {_output(['git', 'describe', '--always', '--dirty'])}, "
            f"LiteLLM {litellm_version}, Python {platform.python_version()}, "
            f"{_wrk.version(wrk)}"
        ),
        "Command": "`"
        + shlex.join([".venv/bin/python", "bench/gateway_overhead.py", *sys.argv[1:]])
        + "`",
        "Settings": (
            f"{args.duration:g} s per measurement after a {args.warmup:g} s warm-up, "
            f"{args.rounds} round(s) (medians), wrk -t{args.threads}, chat completion of "
            f"max_tokens {MAX_TOKENS}, upstream token delay 0; Firebox access log "
            f"{args.firebox_access_log}, LiteLLM's uvicorn access log on (its default)"
        ),
        "Enforcement": (
            "Firebox is called with a member's key of account `bench` (payment method, "
            "unlimited spend limit, 10,000,000 requests/min), so suspension, rate and "
            "spend checks run on every request and none refuses; usage goes through the "
            "ledger writer in every variant. Variants: "
            + "; ".join(f"{VARIANTS[v].label}: {VARIANTS[v].setup}" for v in args.variants)
        ),
        "Admission (server-side, from /metrics)": getattr(args, "admission_shares", "—"),
        "Took": f"{time.monotonic() - started:.0f} s",
    }
    run = Run(cells, facts, "quick" if args.quick else "full", labels)
    print()
    print_table(run)
    print(f"admission (server-side): {facts['Admission (server-side, from /metrics)']}")
    if not args.no_record:
        record(ROOT / "docs" / "benchmarks.md", run)
        print("recorded in docs/benchmarks.md")
    failed = {labels[t]: n for t, n in run.errors_by_target().items() if n}
    if failed:
        print(f"FAILED REQUESTS: {failed}; the figures above are not valid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
