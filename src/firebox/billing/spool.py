"""The write-ahead spool of usage records: local files that outlive a killed process.

Every usage record is appended to a segment file in the spool directory
before it is queued for the ledger, so a record the database has not
committed yet is never only in memory. One record is one JSON line (orjson:
the ``UsageRecord`` fields, times as RFC3339) written with a single
``os.write`` on an ``O_APPEND`` descriptor.

Durability: without ``fsync`` a line is in the kernel's page cache once
``os.write`` returns, which survives the process being killed (SIGKILL, OOM,
a crash) but not the machine losing power. ``fsync=True`` opens segments with
``O_DSYNC`` so each write reaches the disk before ``record()`` returns; it
costs a disk flush per record. A torn last line (power loss mid-write) is
skipped, counted and logged on replay.

Ownership: each live process writes its own segments, named
``usage-<pid>-<random>-<seq>.spool``, and holds an exclusive ``fcntl.flock``
on every segment it has open. A segment nobody holds a lock on belongs to a
process that is gone, and whoever claims its lock replays it (the ledger is
idempotent by request id, so replaying records already written changes
nothing) and deletes it. A segment is deleted while still locked, so a
claimer that loses the race finds the file gone (checked by inode).

The same mechanism, under another ``name`` and ``suffix``, holds the
in-flight journal (``billing/journal.py``); each kind claims only its own
suffix.

A segment is *sealed* (no more appends) when it holds ``segment_records``
lines, or when the ingest seals it (to replay records that never reached the
in-memory queue, or at close). A sealed segment whose records are all
committed is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from firebox.inference.metering import UsageRecord
from firebox.private_files import private_dir

logger = logging.getLogger(__name__)

SUFFIX = ".spool"
STALE_NEW_S = 60.0  # a ".new" file this old was left by a creator that died
_FIELDS = frozenset(f.name for f in fields(UsageRecord))


def encode(usage: UsageRecord) -> bytes:
    """One spool line: the record as JSON (times RFC3339), ending in a newline."""
    return orjson.dumps(usage, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> UsageRecord:
    """The record of one spool line; raises ``ValueError`` on a torn or foreign line."""
    return record_of(orjson.loads(line))


def record_of(data: Any) -> UsageRecord:
    """The record a decoded JSON object holds; raises ``ValueError`` if it is not one."""
    if not isinstance(data, dict):
        raise ValueError("a spool line must be a JSON object")
    known = {k: v for k, v in data.items() if k in _FIELDS}  # newer writers may add fields
    try:
        known["time"] = datetime.fromisoformat(known["time"])
        return UsageRecord(**known)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a usage record: {exc}") from exc


@dataclass(eq=False)
class Segment:
    """One spool file, open and locked by this process.

    ``appended``, ``spilled`` and ``sealed`` change under the spool's lock
    (request threads); ``committed`` only on the ingest's writer thread.
    """

    path: Path
    fd: int
    appended: int = 0  # lines written
    committed: int = 0  # of those, committed to the ledger through the queue
    spilled: int = 0  # of those, never queued (queue full): replayed from the file
    sealed: bool = False

    def settled(self) -> bool:
        """Sealed and every line is either committed or left for a file replay."""
        return self.sealed and self.committed + self.spilled == self.appended

    def records(self) -> tuple[list[UsageRecord], int]:
        """Every record in the file, and how many lines could not be read."""
        records: list[UsageRecord] = []
        corrupt = 0
        for line in self._lines():
            try:
                records.append(decode(line))
            except ValueError:
                corrupt += 1
                logger.error("skipping an unreadable line in usage spool %s", self.path)
        return records, corrupt

    def lines(self) -> Iterator[bytes]:
        """The file's non-blank lines, as written (the journal reads its own kind)."""
        return self._lines()

    def _lines(self) -> Iterator[bytes]:
        with open(self.path, "rb") as file:  # a fresh descriptor: our fd is append-only
            for line in file:
                if line.strip():
                    yield line

    def delete(self) -> None:
        """Remove the file, then release the lock (unlink first: see the module docstring)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        """Close the descriptor (dropping the lock) and keep the file for a later replay."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Spool:
    """This process's segments in ``directory``: appends, rolls, seals, claims orphans."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_records: int = 10_000,
        fsync: bool = False,
        name: str = "usage",
        suffix: str = SUFFIX,
    ) -> None:
        if segment_records < 1:
            raise ValueError("segment_records must be at least 1")
        self.directory = directory
        self.segment_records = segment_records
        self.fsync = fsync
        self.suffix = suffix  # what claim_orphans looks for: one file kind per suffix
        private_dir(self.directory)  # usage records name accounts and models: 0700, files 0600
        self._prefix = f"{name}-{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0
        self._lock = threading.Lock()
        self._current: Segment | None = None
        self._sealed: list[Segment] = []
        self.appended_total = 0  # lines this process appended, all segments

    def append(self, line: bytes) -> Segment:
        """Write ``line`` to the current segment (rolling when full); return the segment."""
        with self._lock:
            segment = self._current
            if segment is None or segment.sealed:
                segment = self._current = self._open_segment()
            os.write(segment.fd, line)
            segment.appended += 1
            self.appended_total += 1
            if segment.appended >= self.segment_records:
                segment.sealed = True
                self._sealed.append(segment)
            return segment

    def mark_spilled(self, segment: Segment) -> None:
        """``segment``'s last record will not be queued: replay it from the file."""
        with self._lock:
            segment.spilled += 1

    def seal_current(self) -> None:
        """Stop appending to the current segment (the next append opens a new one)."""
        with self._lock:
            segment = self._current
            if segment is not None and not segment.sealed and segment.appended:
                segment.sealed = True
                self._sealed.append(segment)

    def current_has_spills(self) -> bool:
        with self._lock:
            return self._current is not None and self._current.spilled > 0

    def settled(self) -> list[Segment]:
        """Sealed segments whose every line is committed or left for a file replay."""
        with self._lock:
            return [s for s in self._sealed if s.settled()]

    def delete(self, segment: Segment) -> None:
        with self._lock:
            if segment in self._sealed:
                self._sealed.remove(segment)
            if self._current is segment:
                self._current = None
        segment.delete()

    def release_all(self) -> None:
        """Close every segment, keeping the files (their records were not all committed)."""
        with self._lock:
            for segment in [*self._sealed, self._current]:
                if segment is not None:
                    segment.release()
            self._sealed.clear()
            self._current = None

    def segments(self) -> list[Segment]:
        """This process's open segments (tests and diagnostics)."""
        with self._lock:
            current = [self._current] if self._current and not self._current.sealed else []
            return [*self._sealed, *current]

    def claim_orphans(self) -> list[Segment]:
        """Lock and return every segment in the directory that no live process holds."""
        for stale in self.directory.glob("*.new"):  # a creator died before its rename
            with contextlib.suppress(FileNotFoundError):
                # never written to (lines go in after the rename); old, so not being created
                if time.time() - stale.stat().st_mtime > STALE_NEW_S:
                    stale.unlink()
        claimed: list[Segment] = []
        for path in sorted(self.directory.glob(f"*{self.suffix}")):
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                continue  # deleted by its owner or another claimer meanwhile
            if not _try_lock(fd):
                os.close(fd)  # a live process (maybe this one) owns it
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # replayed and deleted by another claimer before we locked it
                os.close(fd)
                continue
            segment = Segment(path=path, fd=fd, sealed=True)
            segment.appended = sum(1 for _ in segment._lines())
            segment.spilled = segment.appended  # all of it is replayed from the file
            claimed.append(segment)
        return claimed

    def _open_segment(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self._prefix}-{self._seq:06d}{self.suffix}"
        # Created and locked under a name claimers do not look at, then renamed (same
        # inode, same lock): a claimer never sees a fresh segment unlocked.
        hidden = path.with_suffix(".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        if self.fsync:
            flags |= os.O_DSYNC
        fd = os.open(hidden, flags, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(hidden, path)
        return Segment(path=path, fd=fd)
