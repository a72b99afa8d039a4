"""What a gateway adds to each request: Firebox and LiteLLM in front of one fast upstream.

Run from the repository root (it needs Debian's ``wrk``)::

    .venv/bin/python bench/gateway_overhead.py            # full: ~10 min
    .venv/bin/python bench/gateway_overhead.py --quick    # ~3 s a measurement: ~3 min

It starts on 127.0.0.1 the fake vLLM-shaped upstream (no token delay, so the
gateways' own cost dominates), Firebox pointed at it, and the LiteLLM proxy
(one worker) pointed at it; then, for each stream mode and concurrency, it
loads the upstream directly, Firebox and LiteLLM one after the other (a
warm-up, then a fixed duration), prints requests/s, p50 and p99, the latency
each gateway adds over the upstream and the ratios between them, and records
them in ``docs/benchmarks.md`` under "Gateway overhead". Every process it
starts is stopped when it ends, fails or runs past ``--time-limit``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _litellm
import _wrk
import httpx
from _procs import Server, free_port, start
from _report import BASELINE, DIRECT, FIREBOX, LITELLM, Cell, Figures, Run, print_table, record

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "support" / "fake_upstream.py"
UPSTREAM_MODEL = "fake-model"
MAX_TOKENS = 16
PROMPT = "Write one short sentence about benchmarks."
CHAT = "/v1/chat/completions"


class TimeLimitReached(Exception):
    """Raised by the alarm when the run goes past ``--time-limit``."""


@dataclass(frozen=True)
class Target:
    """One server under load: where to POST, as which model, with which key."""

    name: str
    label: str
    url: str  # the chat completions URL
    model: str
    token: str | None


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
        "--baseline",
        metavar="REV",
        help="also run Firebox as of git revision REV (e.g. HEAD), side by side: before/after",
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
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    targets = 2 + (not args.skip_litellm) + bool(args.baseline)
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


def start_firebox(
    upstream_url: str, work: Path, access_log: bool, name: str = "firebox", src: Path | None = None
) -> tuple[Server, str]:
    """Firebox with a catalog binding ``llama-8b`` to the upstream; returns its demo key.

    ``src``: run the ``firebox`` package found there instead of this tree's.
    """
    catalog = work / "catalog.toml"
    catalog.write_text(
        f"""\
[[models]]
id = "llama-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
contextLength = 8192
public = true
engine = {{ type = "upstream", urls = ["{upstream_url}"], upstreamModel = "{UPSTREAM_MODEL}", \
timeoutS = 30 }}
"""
    )
    data = work / f"{name}-data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    env |= {
        "FIREBOX_ADMIN_KEY": "fw_bench_" + secrets.token_hex(16),
        "FIREBOX_CATALOG_FILE": str(catalog),
        "FIREBOX_ACCESS_LOG": "true" if access_log else "false",
        "FIREBOX_WARM_LOCAL_ENGINES": "false",  # nothing loading in the background
    }
    if src is not None:  # ahead of the editable install's path entry
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    firebox = Path(sys.executable).parent / "firebox"
    argv = [str(firebox), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--data-dir", str(data)]
    server = start(
        name,
        argv,
        url=f"http://127.0.0.1:{port}",
        health_path="/healthz",
        log_dir=work,
        env=env,
        timeout_s=120,
    )
    key = json.loads((data / "credentials.json").read_text())["demoKey"]
    return server, key


def export_source(rev: str, into: Path) -> Path:
    """``src/`` as of git revision ``rev``, unpacked under ``into`` (the repo is untouched)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "src"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeLimitReached`` in the main thread after ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeLimitReached(f"the benchmark ran past its time limit ({seconds:.0f} s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, round(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def settle(target: Target) -> None:
    """Wait until the requests wrk left in flight are done: one more request, answered."""
    headers = {"authorization": f"Bearer {target.token}"} if target.token else {}
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(target.url, json=chat_body(target.model, False), headers=headers, timeout=60)


def measure_one(
    args: argparse.Namespace, wrk: str, target: Target, script: Path, connections: int
) -> Figures:
    """A warm-up, then the measurement; the target is idle again when this returns."""
    common = {"connections": connections, "threads": args.threads}
    if args.warmup > 0:
        _wrk.run(wrk, target.url, script, duration_s=args.warmup, **common)
        settle(target)
    got = _wrk.run(wrk, target.url, script, duration_s=args.duration, **common)
    settle(target)
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
                        f"c={connections:<3} {target.label:<18} {got.rps:8,.0f} req/s  "
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


def start_targets(args: argparse.Namespace, work: Path, servers: list[Server]) -> list[Target]:
    """Start every server (each added to ``servers`` at once, for the caller to stop)."""
    upstream = start_upstream(work)
    servers.append(upstream)
    print(f"upstream (fake) on {upstream.url}", flush=True)
    access_log, model = args.firebox_access_log == "on", "accounts/firebox/models/llama-8b"
    targets = [Target(DIRECT, "upstream (direct)", upstream.url + CHAT, UPSTREAM_MODEL, None)]
    firebox, key = start_firebox(upstream.url + "/v1", work, access_log)
    servers.append(firebox)
    print(f"Firebox on {firebox.url}", flush=True)
    targets.append(Target(FIREBOX, "Firebox", firebox.url + "/inference" + CHAT, model, key))
    if args.baseline:
        src = export_source(args.baseline, work / "baseline")
        base, base_key = start_firebox(upstream.url + "/v1", work, access_log, "baseline", src)
        servers.append(base)
        label = f"Firebox @{args.baseline}"
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


def run_servers(
    args: argparse.Namespace, wrk: str, work: Path
) -> tuple[list[Cell], dict[str, str]]:
    """Start the servers, check each answers, measure; stop them whatever happens."""
    servers: list[Server] = []
    try:
        targets = start_targets(args, work, servers)
        for target in targets:
            probe(target)
        print("all targets answer; measuring", flush=True)
        return measure(args, wrk, targets, work), {t.name: t.label for t in targets}
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
        "Took": f"{time.monotonic() - started:.0f} s",
    }
    run = Run(cells, facts, "quick" if args.quick else "full", labels)
    print()
    print_table(run)
    if not args.no_record:
        record(ROOT / "docs" / "benchmarks.md", run)
        print("recorded in docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
