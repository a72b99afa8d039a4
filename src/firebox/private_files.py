"""Files only the Firebox user may read: the data dir 0700, every file in it 0600.

The data dir holds the SQLite database (account data, key hashes), its
``-wal``/``-shm`` files, ``credentials.json`` (the first-start keys in clear)
and the usage spool. Each is created with an explicit mode rather than by
changing the process umask, which would also tighten files the operator's
other tools write. A data dir an older version created world-readable is
tightened at start, with a log line per path changed.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("firebox.files")

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    """Drop group and other permissions from ``path`` (``mode`` masks it; links are left)."""
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(path.lstat().st_mode) or current & 0o077 == 0:
        return
    wanted = current & mode
    try:
        os.chmod(path, wanted)
    except OSError as exc:  # another user's file: say so, and go on starting
        log.warning("cannot tighten %s (mode %o) to %o: %s", path, current, wanted, exc)
        return
    log.warning(
        "tightened %s from %o to %o: only the Firebox user may read it", path, current, wanted
    )


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing; make it 0700 either way."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing; make it 0600 either way.

    Creating it before a library opens it (SQLite creates 0644) fixes its mode
    from the first byte, and SQLite gives the ``-wal`` and ``-shm`` files the
    mode of the database file.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        _tighten(path, FILE_MODE)
    return path


def tighten_tree(root: Path) -> None:
    """Make ``root`` 0700 and every folder under it 0700, every file 0600."""
    private_dir(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            _tighten(Path(folder) / name, DIR_MODE)
        for name in files:
            _tighten(Path(folder) / name, FILE_MODE)
