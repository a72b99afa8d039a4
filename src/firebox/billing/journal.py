"""The in-flight journal: what admitted requests have delivered, so a SIGKILL bills it.

The usage spool (``spool.py``) holds a request's record once it ends; a
process killed mid-stream never gets there, and without this journal the
tokens it already streamed would never be billed, nor its spend
reservation closed. So each process also journals its requests in flight:

- ``track`` (serving, at admission) only registers the request in memory,
  with a callable that gives its usage record as it would be billed (counts
  zero) and its admission ticket's ``hold`` (the reservation); the flusher
  calls it when it writes the entry, so a request that ends within a flush
  interval never builds either. Nothing touches the disk on the request
  path;
- about once a second (``interval_s``, a flusher thread): one ``os.write``
  holding an open line (record, hold and counts so far) for every request
  admitted since the last flush and still running, a progress line for every
  request whose delivered counts changed since its last line, and a close
  line for every journaled request whose normal record went to the sink
  meanwhile. A request that is admitted and ends between two flushes (most
  requests) writes nothing at all: its normal record is already in the
  spool. Nothing per token touches the disk either: serving only bumps
  a counter on its ``Progress``.

A process killed at any moment thus leaves at most ``interval_s`` of
delivered tokens per stream unrecorded: a request admitted less than
``interval_s`` before the kill may have no entry yet, and then it has run
for less than ``interval_s``. Its hold is then not handed to admission's
``recover``: an in-process hold dies with the process anyway, and a Redis
reservation expires with its TTL, as it did before this journal existed.

The next process to claim the journal (``UsageIngest``, at start and on
every rescan, always *after* the usage segments of dead processes, so a
request's normal record wins) bills
every entry that is open and delivered output, as outcome ``interrupted``
at its last counts, through the same pricing and idempotent ledger as the
spool (same request id, so never twice), and hands every entry's hold to
admission's ``recover`` (settle to that record, or release).

The files are segments of the spool mechanism (``Spool`` with name
``inflight`` and suffix ``.journal``, in the spool directory): per-process,
flock-owned, claimed when their writer is gone. Durability is the spool's:
the page cache survives the process, ``fsync=True`` survives power loss.
A segment is compacted once it holds ``segment_lines`` lines: the entries
still open are written to a fresh segment (open lines at their current
counts), then the old one is deleted; a process with nothing in flight
keeps no journal file. A torn line is skipped and counted on replay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from firebox.billing.spool import Segment, Spool, record_of
from firebox.clock import Clock
from firebox.inference.metering import Opened, Progress, UsageRecord

logger = logging.getLogger(__name__)

SUFFIX = ".journal"
_OPEN, _PROGRESS, _CLOSE = "o", "p", "c"
_NO_ROLL = 2**62  # the journal rolls its segments itself (compaction), never the spool

Counts = tuple[int, int, int]  # prompt, cached prompt, delivered completion tokens


class _Entry:
    """One journaled request; its record and hold are built when first written."""

    __slots__ = ("at", "hold", "on_disk", "opened", "progress", "usage", "written")

    def __init__(self, progress: Progress, opened: Callable[[], Opened]) -> None:
        self.progress = progress
        self.opened = opened
        self.usage: UsageRecord | None = None  # the record the request would get, counts zero
        self.hold: dict[str, object] | None = None
        self.written: Counts = (0, 0, 0)  # the counts of its last line
        self.at: datetime | None = None  # the time of its last progress line
        self.on_disk = False  # its open line is written (by a flush, or a compaction)


@dataclass(frozen=True, slots=True)
class Recovered:
    """One request a dead process left in its journal.

    ``usage`` is what to bill (None: it delivered nothing, or ``closed``: its
    normal record was written); ``hold`` is what admission must close.
    """

    request_id: str
    usage: UsageRecord | None
    hold: dict[str, object] | None
    closed: bool


def _line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)


def _open_line(entry: _Entry, counts: Counts, at: datetime | None) -> bytes:
    """An entry's open line: its record and hold, with its counts as of ``at`` if any."""
    if entry.usage is None:
        entry.usage, entry.hold = entry.opened()
    if at is None or counts == (0, 0, 0):
        return _line({"e": _OPEN, "u": entry.usage, "h": entry.hold})
    return _line({"e": _OPEN, "u": entry.usage, "h": entry.hold, "n": counts, "t": at})


class Journal:
    """This process's in-flight journal in ``directory``; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        clock: Clock,
        *,
        interval_s: float = 1.0,
        segment_lines: int = 10_000,
        fsync: bool = False,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._clock = clock
        self.interval_s = interval_s
        self._segment_lines = max(segment_lines, 1)
        self._spool = Spool(
            directory, segment_records=_NO_ROLL, fsync=fsync, name="inflight", suffix=SUFFIX
        )
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._lines = 0  # lines in the current segment
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Counters (read them as attributes; only ever rise).
        self.opened = 0  # requests registered at admission
        self.flushes = 0  # batched writes of open, progress and close lines
        self.compactions = 0  # segments rewritten to their open entries
        self.write_errors = 0  # journal writes that failed (the request still ran)

    # -- serving's side (UsageJournal) ---------------------------------------------

    def track(self, progress: Progress, opened: Callable[[], Opened]) -> None:
        """Track ``progress``'s request from admission; the next flush writes its open line.

        No disk write, no encoding and no record built here, on the request
        path: ``opened`` (record and hold) runs on the flusher's thread, and
        only for a request still running at a flush.
        """
        entry = _Entry(progress, opened)
        with self._lock:
            self._entries[progress.request_id] = entry
            self.opened += 1
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="inflight-journal", daemon=True
                )
                self._thread.start()

    def open(self, usage: UsageRecord, hold: dict[str, object] | None) -> Progress:
        """``track`` a request whose record and hold are at hand; returns its progress."""
        progress = Progress(usage.request_id)
        self.track(progress, lambda: (usage, hold))
        return progress

    def close(self, progress: Progress) -> None:
        """The request's normal record is in the sink; the next flush writes its close line."""
        progress.done = True

    # -- the flusher --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # never let the journal stop; the next flush retries
                logger.exception("in-flight journal flush failed")

    def flush(self) -> None:
        """Write what changed since the last flush in one write; compact a full segment."""
        now = self._clock.now()
        with self._lock:
            lines: list[bytes] = []
            for request_id, entry in list(self._entries.items()):
                progress = entry.progress
                if progress.done:
                    # Never written (it ended within a flush interval): its record is in
                    # the sink and nothing on disk names it, so it needs no close line.
                    if entry.on_disk:
                        lines.append(_line({"e": _CLOSE, "id": request_id}))
                    del self._entries[request_id]
                    continue
                counts = progress.counts()
                if not entry.on_disk:
                    try:
                        lines.append(_open_line(entry, counts, now))
                    except Exception:  # its record could not be built: it cannot be journaled
                        logger.exception("in-flight journal cannot describe %s", request_id)
                        self.write_errors += 1
                        del self._entries[request_id]
                        continue
                    entry.on_disk, entry.written, entry.at = True, counts, now
                elif counts != entry.written:
                    lines.append(_line({"e": _PROGRESS, "id": request_id, "n": counts, "t": now}))
                    entry.written, entry.at = counts, now
            if lines:
                self._write(b"".join(lines), len(lines))
                self.flushes += 1
            if self._lines and (not self._entries or self._lines >= self._segment_lines):
                self._compact()

    def _compact(self) -> None:
        """Start a new segment with the open entries' state, then drop the old ones."""
        self._spool.seal_current()
        old = self._spool.segments()
        self._lines = 0
        if self._entries:
            snapshot = [_open_line(e, e.written, e.at) for e in self._entries.values()]
            if not self._write(b"".join(snapshot), len(snapshot)):
                return  # keep the old segments: they still hold the state
        for segment in old:
            self._spool.delete(segment)
        self.compactions += 1

    def _write(self, data: bytes, lines: int) -> bool:
        try:
            self._spool.append(data)
        except OSError:
            self.write_errors += 1
            logger.exception("in-flight journal write failed")
            return False
        self._lines += lines
        return True

    def stop(self) -> None:
        """Stop the flusher, write what it had, and close the files.

        With nothing left open the segment is deleted; otherwise it stays for
        the next start to settle (requests cut by this shutdown).
        """
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(10)
        self.flush()
        self._spool.release_all()

    def abandon(self) -> None:
        """Drop the files' locks without a flush, as a killed process does (tests, drills)."""
        self._stop.set()
        self._spool.release_all()

    # -- replay of dead processes' journals -------------------------------------------

    def claim_orphans(self) -> list[Segment]:
        """Lock and return every journal segment no live process holds."""
        return self._spool.claim_orphans()


def read(segments: Sequence[Segment]) -> tuple[list[Recovered], int]:
    """Every request in ``segments`` (read in order), and how many lines were unreadable.

    A request may appear in two segments of one process (killed between a
    compaction's write and its delete): the later state wins, and a close
    anywhere closes it.
    """
    opened: dict[str, tuple[UsageRecord, dict[str, object] | None]] = {}
    counts: dict[str, tuple[Counts, datetime | None]] = {}
    closed: set[str] = set()
    corrupt = 0
    for segment in sorted(segments, key=lambda s: s.path.name):
        for raw in segment.lines():
            try:
                data = orjson.loads(raw)
                kind = data["e"]
                if kind == _OPEN:
                    usage = record_of(data["u"])
                    hold = data.get("h")
                    opened[usage.request_id] = (usage, hold if isinstance(hold, dict) else None)
                    if "n" in data:
                        counts[usage.request_id] = _parsed(data)
                elif kind == _PROGRESS:
                    counts[str(data["id"])] = _parsed(data)
                elif kind == _CLOSE:
                    closed.add(str(data["id"]))
                else:
                    raise ValueError(f"unknown journal line kind {kind!r}")
            except (ValueError, KeyError, TypeError):
                corrupt += 1
                logger.error("skipping an unreadable line in journal %s", segment.path)
    recovered = []
    for request_id, (usage, hold) in opened.items():
        if request_id in closed:
            recovered.append(Recovered(request_id, None, hold, closed=True))
            continue
        (prompt, cached, completion), at = counts.get(request_id, ((0, 0, 0), None))
        billed = None
        if completion > 0:  # it delivered output (as the normal path bills a cut stream)
            end = at or usage.time
            billed = replace(
                usage,
                time=end,
                prompt_tokens=prompt,
                cached_prompt_tokens=cached,
                completion_tokens=completion,
                outcome="interrupted",
                duration_ms=max((end - usage.time).total_seconds() * 1000, 0.0),
            )
        recovered.append(Recovered(request_id, billed, hold, closed=False))
    return recovered, corrupt


def _parsed(data: dict[str, Any]) -> tuple[Counts, datetime | None]:
    prompt, cached, completion = (int(x) for x in data["n"])
    at = data.get("t")
    return (prompt, cached, completion), (datetime.fromisoformat(at) if at else None)
