"""Run ``firebox`` under cProfile and write its stats when SIGTERM stops it.

``python bench/_profiled.py OUT.pstats serve ...``. uvicorn re-raises the
signal that stopped it once it has shut down; the default SIGTERM action
would end the process before cProfile writes anything, so SIGTERM here raises
SystemExit instead.
"""

from __future__ import annotations

import cProfile
import signal
import sys


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    out, sys.argv = sys.argv[1], ["firebox", *sys.argv[2:]]
    signal.signal(signal.SIGTERM, _exit)
    from firebox.cli.main import main as firebox_main

    profiler = cProfile.Profile()
    try:
        profiler.runcall(firebox_main)
    except SystemExit:
        pass
    finally:
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
