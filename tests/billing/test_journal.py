"""The in-flight journal: requests a killed process left mid-stream are billed once.

A "dead process" here is a ``Journal`` whose files lost their locks without
a final flush (``abandon``), exactly what a SIGKILL leaves; a fresh
``UsageIngest`` on the same spool dir then replays it at ``start``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from firebox.billing.events import NoListener
from firebox.billing.ingest import UsageIngest
from firebox.billing.journal import SUFFIX, Journal, Recovered
from firebox.billing.ledger import Ledger
from firebox.billing.spool import Spool, encode
from firebox.clock import FakeClock
from firebox.inference.metering import Opened, Progress
from firebox.store.database import Database
from tests.billing.conftest import T0, MakeAccount, usage
from tests.billing.test_ingest import PRICER, rows

HOLD = {"id": "res-1", "account_id": "acme", "period": "2026-01", "micros": 900, "shared": True}


@pytest.fixture
def ledger(billing_db: Database, make_account: MakeAccount) -> Ledger:
    make_account("acme")
    return Ledger(billing_db, FakeClock(T0), NoListener())


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def dead_journal(spool_dir: Path, **kwargs: int) -> Journal:
    """A journal whose flusher never runs on its own (the tests flush by hand)."""
    return Journal(spool_dir, FakeClock(T0), interval_s=3600, **kwargs)


def restart(ledger: Ledger, spool_dir: Path) -> tuple[UsageIngest, list[Recovered]]:
    """A new process on ``spool_dir``: start replays, and reports the holds it found."""
    handed: list[Recovered] = []
    sink = UsageIngest(PRICER, ledger, spool_dir, journal=dead_journal(spool_dir))
    sink.on_recovered = handed.extend
    sink.start()  # returns once dead processes' spools and journals are replayed
    return sink, handed


def deliver(progress: Progress, tokens: int, prompt: int = 7) -> None:
    for _ in range(tokens):
        progress.delivered(1, prompt, 2)


def test_an_open_entry_is_billed_once_at_its_last_flushed_counts(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    journal = dead_journal(spool_dir)
    progress = journal.open(usage(request_id="cut"), HOLD)
    deliver(progress, 40)
    journal.flush()
    deliver(progress, 5)  # after the last flush: the at most one interval that is lost
    journal.abandon()  # SIGKILL

    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"cut": 40}
        assert sink.interrupted == 1
        (entry,) = handed
        assert entry.hold == HOLD and not entry.closed
        assert entry.usage is not None
        assert (entry.usage.prompt_tokens, entry.usage.cached_prompt_tokens) == (7, 2)
        assert entry.usage.outcome == "interrupted"
        assert journal_files(spool_dir) == []  # replayed, then deleted
    finally:
        sink.close()
    again, handed_again = restart(ledger, spool_dir)  # nothing left to replay
    again.close()
    assert handed_again == [] and rows(billing_db) == {"cut": 40}


def test_a_closed_entry_is_not_billed_again_and_its_hold_is_released(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    journal = dead_journal(spool_dir)
    journal.open(usage(request_id="other"), None)  # keeps the segment (and the close line)
    normal = usage(request_id="done", completion_tokens=50)
    progress = journal.open(usage(request_id="done"), HOLD)
    deliver(progress, 30)
    journal.flush()
    deliver(progress, 20)
    ledger.apply([PRICER.price(normal)])  # the normal record reached the ledger
    journal.close(progress)
    journal.flush()  # the close line
    journal.abandon()

    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"done": 50}
        assert sink.interrupted == 0
        assert Recovered("done", None, HOLD, closed=True) in handed
    finally:
        sink.close()


def test_a_normal_record_still_in_the_dead_spool_wins_over_its_open_entry(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    """Killed after the record was spooled, before the journal's close line was flushed."""
    journal = dead_journal(spool_dir)
    progress = journal.open(usage(request_id="raced"), HOLD)
    deliver(progress, 30)
    journal.flush()
    dead_spool = Spool(spool_dir)
    dead_spool.append(encode(usage(request_id="raced", completion_tokens=33)))
    dead_spool.release_all()
    journal.close(progress)  # never flushed
    journal.abandon()

    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"raced": 33}  # the spool is replayed first
        assert [h.hold for h in handed] == [HOLD]
    finally:
        sink.close()


def test_an_entry_that_delivered_nothing_is_not_billed_but_its_hold_is_handed_over(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    journal = dead_journal(spool_dir)
    journal.open(usage(request_id="silent"), HOLD)
    journal.flush()
    journal.abandon()
    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {}
        assert handed == [Recovered("silent", None, HOLD, closed=False)]
    finally:
        sink.close()


def test_a_torn_line_is_skipped_and_counted_and_the_rest_is_billed(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    journal = dead_journal(spool_dir)
    progress = journal.open(usage(request_id="whole"), None)
    deliver(progress, 12)
    journal.flush()
    journal.abandon()
    (path,) = journal_files(spool_dir)
    with path.open("ab") as file:
        file.write(b'{"e":"p","id":"whole","n":[7,2,9')  # power lost mid-write
    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"whole": 12}
        assert sink.corrupt_lines == 1
        assert [h.request_id for h in handed] == ["whole"]
    finally:
        sink.close()


def test_a_full_segment_is_compacted_to_its_open_entries(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    journal = dead_journal(spool_dir, segment_lines=6)
    long = journal.open(usage(request_id="long"), HOLD)
    for i in range(5):
        short = journal.open(usage(request_id=f"short-{i}"), None)
        deliver(short, 3)
        journal.flush()  # its open line, so that its close line is needed too
        journal.close(short)
        deliver(long, 10)
        journal.flush()
    assert journal.compactions >= 1
    (path,) = journal_files(spool_dir)  # the old segment went; the new one holds "long"
    assert b"short-" not in path.read_bytes().split(b"\n")[0]
    journal.abandon()
    sink, _ = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"long": 50}
    finally:
        sink.close()


def test_nothing_in_flight_leaves_no_journal_file(spool_dir: Path) -> None:
    journal = dead_journal(spool_dir)
    progress = journal.open(usage(request_id="slow"), None)
    journal.flush()
    assert len(journal_files(spool_dir)) == 1
    journal.close(progress)
    journal.flush()
    assert journal_files(spool_dir) == []
    journal.stop()


def test_a_request_that_ends_between_flushes_never_touches_the_journal_file(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    """Open is in memory only: no encoding, no write on the request path.

    The next flush writes what is still running (with its counts so far);
    a request that ended meanwhile has its record in the sink and needs no line.
    """
    journal = dead_journal(spool_dir)
    assert journal_files(spool_dir) == []
    running = journal.open(usage(request_id="running"), HOLD)
    quick = journal.open(usage(request_id="quick"), HOLD)
    assert journal_files(spool_dir) == []  # nothing written at admission
    deliver(quick, 5)
    journal.close(quick)
    deliver(running, 7)
    journal.flush()
    (path,) = journal_files(spool_dir)
    data = path.read_bytes()
    assert b"quick" not in data and data.count(b"running") == 1
    journal.abandon()
    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"running": 7}
        assert [h.request_id for h in handed] == ["running"]
    finally:
        sink.close()


def test_a_live_process_journal_is_left_alone(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    live = dead_journal(spool_dir)
    deliver(live.open(usage(request_id="theirs"), HOLD), 4)
    live.flush()
    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {} and handed == []
        assert len(journal_files(spool_dir)) == 1
    finally:
        sink.close()
        live.abandon()


class _Run:
    """Stands for a ``GenerationRun``: the prompt counts the journal reads."""

    prompt_tokens = 0
    cached_tokens = 0


def test_a_tracked_request_is_described_only_by_a_flush_that_writes_it(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    """Serving's path: ``track`` builds nothing; the flusher builds the entry once.

    Deliveries are one counter update; the prompt counts are read from the
    run as of each flush.
    """
    journal = dead_journal(spool_dir)
    described: list[str] = []

    def entry(request_id: str) -> Callable[[], Opened]:
        def opened() -> Opened:
            described.append(request_id)
            return usage(request_id=request_id), HOLD

        return opened

    quick, running = Progress("quick"), Progress("running", run := _Run())
    journal.track(quick, entry("quick"))
    journal.track(running, entry("running"))
    quick.completion_tokens += 3
    journal.close(quick)
    run.prompt_tokens, run.cached_tokens = 11, 2
    running.completion_tokens += 6
    journal.flush()
    assert described == ["running"]  # the request that ended was never described
    running.completion_tokens += 2
    run.prompt_tokens = 12
    journal.flush()
    assert described == ["running"]  # once, whatever the flushes
    journal.abandon()
    sink, handed = restart(ledger, spool_dir)
    try:
        assert rows(billing_db) == {"running": 8}
        assert [(h.request_id, h.hold) for h in handed] == [("running", HOLD)]
        (recovered,) = handed
        assert recovered.usage is not None
        assert (recovered.usage.prompt_tokens, recovered.usage.cached_prompt_tokens) == (12, 2)
    finally:
        sink.close()


def test_an_entry_that_cannot_be_described_is_dropped_and_the_rest_written(
    spool_dir: Path,
) -> None:
    journal = dead_journal(spool_dir)

    def broken() -> Opened:
        raise RuntimeError("no record")

    journal.track(Progress("broken"), broken)
    good = journal.open(usage(request_id="good"), None)
    journal.flush()
    (path,) = journal_files(spool_dir)
    data = path.read_bytes()
    assert b"good" in data and b"broken" not in data
    assert journal.write_errors == 1
    journal.close(good)
    journal.stop()
