"""Interactive latency while a batch job runs on the same in-process engine.

Starts ``firebox serve`` (bundled firebox-tiny, CPU) and measures sequential
interactive chat requests (greedy, ``--max-tokens``, a ``--gap`` between
them, as a user would leave) three ways, on one server per batch setting:

- ``alone``: no batch running;
- ``batch (yields)``: an OpenAI-shaped batch of ``--lines`` requests running,
  with the default rule: a batch line starts only when no interactive request
  is in flight, and the in-process engine pauses batch sequences in every step
  that has an interactive one to run;
- ``batch (no yield)``: the same batch with ``FIREBOX_BATCH_YIELD=false``
  (lines start and step whatever the interactive load): what yielding saves.

Reports p50 / p95 / mean interactive latency, the ratio to ``alone`` on the
same server, and the batch lines finished per second meanwhile, then records
the table in docs/benchmarks.md under "## Batch interference".

    .venv/bin/python bench/batch_interference.py            # about 3 minutes here
    .venv/bin/python bench/batch_interference.py --quick    # fewer requests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import Server, free_port, start

ROOT = Path(__file__).resolve().parents[1]
TINY = "accounts/firebox/models/firebox-tiny"
HEADING = "## Batch interference"
QUESTIONS = ["What color is the sky?", "Name a fruit.", "Count to three.", "Say hello."]


@dataclass
class Row:
    setting: str
    phase: str
    p50_ms: float
    p95_ms: float
    mean_ms: float
    batch_lines_per_s: float | None


def _serve(work: Path, name: str, env: dict[str, str]) -> tuple[Server, str]:
    port = free_port()
    data = work / f"{name}-data"
    full = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    full |= {
        "FIREBOX_ADMIN_KEY": "fw_bench_" + secrets.token_hex(16),
        "FIREBOX_WARM_LOCAL_ENGINES": "true",
        "FIREBOX_ACCESS_LOG": "false",
        "FIREBOX_BATCH_POLL_S": "0.2",
    } | env
    firebox = Path(sys.executable).parent / "firebox"
    argv = [str(firebox), "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = start(
        name,
        [*argv, "--data-dir", str(data)],
        url=f"http://127.0.0.1:{port}",
        health_path="/healthz",
        log_dir=work,
        env=full,
        timeout_s=180,
    )
    key = json.loads((data / "credentials.json").read_text())["demoKey"]
    return server, key


def _chat(client: httpx.Client, i: int, max_tokens: int) -> float:
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % 4]} ({i})"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    answer = client.post("/v1/chat/completions", json=body)
    answer.raise_for_status()
    return (time.perf_counter() - started) * 1000


def _interactive(client: httpx.Client, count: int, max_tokens: int, gap_s: float) -> list[float]:
    latencies = []
    for i in range(count):
        latencies.append(_chat(client, i, max_tokens))
        time.sleep(gap_s)
    return latencies


def _submit_batch(client: httpx.Client, lines: int, max_tokens: int) -> str:
    text = "".join(
        json.dumps(
            {
                "custom_id": f"b-{i}",
                "body": {
                    "model": TINY,
                    "messages": [{"role": "user", "content": f"Tell a story about {i}."}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            }
        )
        + "\n"
        for i in range(lines)
    )
    uploaded = client.post(
        "/v1/files", files={"file": ("b.jsonl", text.encode())}, data={"purpose": "batch"}
    )
    uploaded.raise_for_status()
    body = {
        "input_file_id": uploaded.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = client.post("/v1/batches", json=body)
    created.raise_for_status()
    return str(created.json()["id"])


def _done(client: httpx.Client, batch_id: str) -> tuple[str, int]:
    batch = client.get(f"/v1/batches/{batch_id}").json()
    counts = batch["request_counts"]
    return batch["status"], int(counts["completed"]) + int(counts["failed"])


def _row(setting: str, phase: str, latencies: list[float], rate: float | None) -> Row:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Row(setting, phase, statistics.median(ordered), p95, statistics.fmean(ordered), rate)


def measure(work: Path, setting: str, env: dict[str, str], args: argparse.Namespace) -> list[Row]:
    """``args.rounds`` rounds of: interactive alone, then beside a fresh batch (then cancelled).

    Alternating the two phases on one server keeps a shared machine's load
    drift out of the comparison; each phase's samples are pooled over rounds.
    """
    server, key = _serve(work, setting.split()[1].strip("()") + "-" + str(len(env)), env)
    alone: list[float] = []
    busy: list[float] = []
    lines_done, busy_s = 0, 0.0
    per_round = max(args.requests // args.rounds, 1)
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as client:
            _interactive(client, 5, args.max_tokens, 0)  # warm-up
            for _ in range(args.rounds):
                alone += _interactive(client, per_round, args.max_tokens, args.gap)
                batch_id = _submit_batch(client, args.lines, args.batch_max_tokens)
                deadline = time.monotonic() + 120
                while _done(client, batch_id)[1] < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                _, before = _done(client, batch_id)
                started = time.monotonic()
                busy += _interactive(client, per_round, args.max_tokens, args.gap)
                busy_s += time.monotonic() - started
                status, after = _done(client, batch_id)
                if status != "in_progress":
                    print(f"warning: the batch was {status} ({after}/{args.lines}) by the end")
                lines_done += after - before
                client.post(f"/v1/batches/{batch_id}/cancel")
                while _done(client, batch_id)[0] not in ("cancelled", "completed", "failed"):
                    time.sleep(0.1)
        return [
            _row(setting, "alone", alone, None),
            _row(setting, "batch running", busy, lines_done / busy_s),
        ]
    finally:
        server.stop()


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        f"`bench/batch_interference.py{' --quick' if args.quick else ''}`, {when}, "
        f"{platform.machine()} with {os.cpu_count()} cores (shared), firebox-tiny on CPU. "
        f"{args.requests} sequential interactive chats per phase (max_tokens "
        f"{args.max_tokens}, {args.gap:g} s apart), in {args.rounds} rounds alternating no "
        f"batch / a batch of {args.lines} lines running (max_tokens {args.batch_max_tokens}, "
        "FIREBOX_BATCH_CONCURRENCY 4; cancelled after each round). Ratios are to `alone` on "
        "the same server.",
        "",
        "| setting | phase | p50 ms | p95 ms | mean ms | p50 ratio | mean ratio | batch lines/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base: dict[str, Row] = {r.setting: r for r in rows if r.phase == "alone"}
    for r in rows:
        b = base[r.setting]
        rate = f"{r.batch_lines_per_s:.2f}" if r.batch_lines_per_s is not None else ""
        lines.append(
            f"| {r.setting} | {r.phase} | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.mean_ms:.0f} | "
            f"{r.p50_ms / b.p50_ms:.2f} | {r.mean_ms / b.mean_ms:.2f} | {rate} |"
        )
    return "\n".join(lines) + "\n"


def record(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(HEADING)}\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(current):
        current = pattern.sub(text.rstrip("\n"), current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--gap", type=float, default=0.2)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--batch-max-tokens", type=int, default=32)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 20, 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fb-batch-bench-") as tmp:
        work = Path(tmp)
        rows += measure(work, "batch (yields)", {}, args)
        rows += measure(work, "batch (no yield)", {"FIREBOX_BATCH_YIELD": "false"}, args)
    text = markdown(rows, args)
    print(text)
    if not args.no_record:
        record(text)


if __name__ == "__main__":
    main()
