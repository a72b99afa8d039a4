"""The first-start keys, saved for a local operator in ``credentials.json``.

Kept apart from the bootstrap (which needs the database) so that the CLI can
read the saved operator key without importing SQLAlchemy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from firebox.private_files import private_dir

DEMO_ACCOUNT = "demo"


class CreatedKeys(Protocol):
    """What a bootstrap run created (``BootstrapResult``)."""

    operator_key: str | None
    demo_key: str | None


def save_credentials(data_dir: Path, result: CreatedKeys) -> Path:
    """Keep the keys made on first start in ``data_dir/credentials.json`` (mode 0600).

    The secrets exist nowhere else (only hashes are stored), and a local
    operator needs them again after the first start's output scrolled away.
    """
    path = data_dir / "credentials.json"
    saved: dict[str, str] = {}
    if path.exists():
        saved = json.loads(path.read_text())
    if result.operator_key:
        saved["operatorKey"] = result.operator_key
    if result.demo_key:
        saved["demoKey"] = result.demo_key
        saved["demoAccount"] = DEMO_ACCOUNT
    if result.operator_key or result.demo_key:
        private_dir(data_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # the mode above applies only when the file is new
        with os.fdopen(fd, "w") as handle:
            json.dump(saved, handle, indent=2)
    return path


def load_credentials(data_dir: Path) -> dict[str, str]:
    """The saved first-start keys, or an empty dict."""
    path = data_dir / "credentials.json"
    if not path.exists():
        return {}
    loaded = json.loads(path.read_text())
    return {str(k): str(v) for k, v in loaded.items()}
