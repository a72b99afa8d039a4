"""What Firebox spends on each chat request, in server CPU time: robust to a loaded machine.

Run from the repository root::

    .venv/bin/python bench/gateway_cpu.py --rev 8a5f94f            # this tree vs 8a5f94f
    .venv/bin/python bench/gateway_cpu.py --rev 8a5f94f --rev main --requests 3000
    .venv/bin/python bench/gateway_cpu.py --profile /tmp/prof     # cProfile each server

Wall-clock requests/s (``gateway_overhead.py``) swing by 2x when other work
shares the machine's cores; the CPU time a server process spends on a fixed
number of requests barely moves, because time spent waiting for a core is not
counted. So this script starts the fake upstream, Firebox from this tree
and, side by side, Firebox as of each ``--rev`` (``git archive``, the repo is
untouched), each with enforcement on in the embedded mode (SQLite,
in-process counters) and called with the member key of a normal account,
exactly as ``gateway_overhead.py`` does. For plain and streaming chat
completions (``max_tokens`` 16) it sends each server ``--warmup`` requests,
then ``--requests`` more from ``--concurrency`` keep-alive connections, and
reads the server's user+system CPU time (every thread of its process and
any child) before and after from ``/proc``: CPU-µs per request. Servers are
measured one after the other within a round, ``--rounds`` times; medians
kept. Nothing is recorded: copy the table into ``docs/benchmarks.md``
("Gateway CPU per request") by hand with the date and machine.

``--callgrind`` runs every server under valgrind's callgrind (instrumented
only once it has started) and reports the instructions it executes per
request instead of CPU time: slower (use ``--requests 200``), but exact
to within a fraction of a percent on a machine others are loading, where
CPU time still moves by 10-20% (cache and core contention). Needs Debian's
``valgrind``.

``--profile DIR`` runs every server under cProfile and writes
``DIR/<target>.pstats`` when it stops (read them with ``python -m pstats``).
Profiling inflates every figure; compare profiles with profiles only.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import _firebox
import httpx
import psutil
from _procs import Server, free_port, start

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "support" / "fake_upstream.py"
UPSTREAM_MODEL = "fake-model"
MODEL = "accounts/firebox/models/llama-8b"
CHAT = "/inference/v1/chat/completions"
MAX_TOKENS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[], help="also run this git revision")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per cell")
    parser.add_argument("--warmup", type=int, default=200, help="requests before each cell")
    parser.add_argument("--rounds", type=int, default=3, help="repeat; medians kept")
    parser.add_argument("--concurrency", type=int, default=1, help="keep-alive connections")
    parser.add_argument("--modes", default="plain,stream", help="plain, stream or both")
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument("--profile", type=Path, help="cProfile each server into this folder")
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions per request (valgrind)"
    )
    parser.add_argument("--callgrind-keep", type=Path, help="with --callgrind: keep the dumps here")
    return parser.parse_args(argv)


def body(stream: bool) -> dict[str, object]:
    messages = [{"role": "user", "content": "Write one short sentence about benchmarks."}]
    return {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "stream": stream}


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of process ``pid`` (all its threads) and its children."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class Callgrind:
    """Instruction counts of servers run under ``valgrind --tool=callgrind``.

    Each thread is counted apart (``--separate-threads``): the event loop's
    thread (the process's first) serves every request and bounds the
    throughput; the others are the ledger writer, the journal's flusher and
    worker threads, which share its GIL.
    """

    def __init__(self, work: Path, keep: Path | None = None) -> None:
        self.work = work
        self.keep = keep  # copy every dump here (read them with callgrind_annotate)
        self.dumps = 0

    def wrap(self, label: str) -> list[str]:
        out = self.work / f"callgrind.{label}.%p"
        return [
            shutil.which("valgrind") or "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",  # start-up runs uninstrumented (fast); see start()
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
        ]

    @staticmethod
    def control(pid: int, *flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True)

    def start(self, pid: int) -> None:
        self.control(pid, "--instr=on")

    def instructions(self, pid: int) -> tuple[int, int]:
        """Instructions since the last call (or ``start``), all threads and the event loop's.

        Dumps (which zeroes the counters) and reads the dump files.
        """
        before = set(self.work.glob("callgrind.*"))
        self.control(pid, "--dump")
        self.dumps += 1
        total = loop = 0
        for dump in sorted(set(self.work.glob("callgrind.*")) - before):
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    count = int(line.split()[1])
                    total += count
                    if dump.name.endswith("-01"):  # thread 1: the main thread, the loop's
                        loop += count
                    break
            if self.keep is not None:
                self.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, self.keep / f"{dump.name}.{self.dumps}")
            dump.unlink()
        return total, loop


def drive(url: str, key: str, stream: bool, count: int, connections: int) -> None:
    """``count`` requests over ``connections`` keep-alive clients; each answer read whole."""
    payload = body(stream)
    headers = {"authorization": f"Bearer {key}"}
    last = f"tok{MAX_TOKENS - 1}"
    errors: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(headers=headers, timeout=60) as client:
            for _ in range(n):
                answer = client.post(url, json=payload)
                if answer.status_code != 200 or last not in answer.text:
                    errors.append(f"{answer.status_code} {answer.text[:300]}")
                    return

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")


def measure(
    server: Server, key: str, stream: bool, args: argparse.Namespace, grind: Callgrind | None
) -> dict[str, float]:
    """One cell: warm up, then the server's cost of ``args.requests`` requests, per request."""
    url, pid = server.url + CHAT, server.process.pid
    drive(url, key, stream, args.warmup, args.concurrency)
    if grind is not None:
        grind.instructions(pid)  # drops the warm-up's
        drive(url, key, stream, args.requests, args.concurrency)
        total, loop = grind.instructions(pid)
        return {"instructions": total / args.requests, "loop instructions": loop / args.requests}
    before = cpu_seconds(pid)
    drive(url, key, stream, args.requests, args.concurrency)
    return {"CPU-µs": (cpu_seconds(pid) - before) / args.requests * 1e6}


def start_upstream(work: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(FAKE), "--port", str(port), "--model", UPSTREAM_MODEL]
    return start(
        "upstream",
        argv,
        url=f"http://127.0.0.1:{port}",
        health_path="/v1/models",
        log_dir=work,
        cwd=ROOT,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="firebox-cpu-") as tmp:
        work = Path(tmp)
        try:
            upstream = start_upstream(work)
            servers.append(upstream)
            catalog = _firebox.write_catalog(
                work / "catalog.toml", upstream.url + "/v1", UPSTREAM_MODEL
            )
            grind = Callgrind(work, args.callgrind_keep) if args.callgrind else None
            names = ["this tree", *args.rev]
            targets: list[tuple[str, Server, str]] = []
            for i, name in enumerate(names):
                src = None if i == 0 else _firebox.export_source(name, work / f"rev{i}")
                label = f"t{i}"
                profile = None
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    tag = "tree" if i == 0 else name.replace("/", "_")
                    profile = args.profile / f"{tag}.pstats"
                server, key = _firebox.start_firebox(
                    label,
                    catalog,
                    work,
                    access_log=args.access_log == "on",
                    extra_env={"FIREBOX_ENFORCEMENT": "true"},
                    src=src,
                    profile=profile,
                    wrap=grind.wrap(label) if grind else (),
                )
                servers.append(server)
                if grind:
                    grind.start(server.process.pid)
                targets.append((name, server, key))
            results: dict[tuple[str, str, str], list[float]] = {}
            for round_no in range(args.rounds):
                for mode in modes:
                    for name, server, key in targets:
                        figures = measure(server, key, mode == "stream", args, grind)
                        shown = []
                        for metric, per in figures.items():
                            results.setdefault((mode, name, metric), []).append(per)
                            shown.append(f"{per:10.0f} {metric}")
                        print(
                            f"  round {round_no + 1} {mode:<6} {name:<12} " + ", ".join(shown),
                            flush=True,
                        )
        finally:
            for server in reversed(servers):
                server.stop()
    metrics = ["instructions", "loop instructions"] if grind else ["CPU-µs"]
    for metric in metrics:
        print()
        print(
            f"server {metric} per request (median of {args.rounds}; c={args.concurrency}, "
            f"{args.requests} requests, access log {args.access_log})"
        )
        header = f"{'mode':<8}" + "".join(f"{n:>14}" for n in names)
        if len(names) > 1:
            header += "".join(f"{'tree/' + n:>18}" for n in names[1:])
        print(header)
        for mode in modes:
            medians = [statistics.median(results[(mode, n, metric)]) for n in names]
            row = f"{mode:<8}" + "".join(f"{m:14.0f}" for m in medians)
            row += "".join(f"{medians[0] / m:18.2f}" for m in medians[1:])
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
