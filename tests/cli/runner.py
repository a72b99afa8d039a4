"""Run the real ``firebox`` command line in its own process, as a user or a script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN_KEY = "fb_test_operator_key_0123456789abcdef"
CLI_TIMEOUT_S = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any FIREBOX_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    env["COLUMNS"] = "200"  # wide enough that Rich tables never fold ids
    env.update(extra)
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., CliResult]  # the ``cli`` fixture: run_cli bound to a server


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> CliResult:
    """``python -m firebox.cli.main ARGS`` with exactly ``env``, in ``cwd``."""
    proc = subprocess.run(
        [sys.executable, "-m", "firebox.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
