"""UsageIngest: every recorded usage reaches the ledger exactly once, whatever fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from firebox.billing.events import NoListener
from firebox.billing.ingest import UsageIngest
from firebox.billing.ledger import Ledger
from firebox.billing.models import UsageRecordRow
from firebox.billing.overrides import NoOverrides
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import PricedUsage, Pricer
from firebox.billing.spool import SUFFIX, Spool, encode
from firebox.clock import FakeClock
from firebox.inference.metering import UsageRecord
from firebox.store.database import Database
from tests.billing.conftest import MakeAccount, usage

ROOT = Path(__file__).resolve().parents[2]
PRICER = Pricer(PriceBook.load(), NoOverrides())


def rows(db: Database) -> dict[str, int]:
    """request id -> completion tokens of every usage row."""
    with db.transaction() as session:
        found = session.execute(
            select(UsageRecordRow.request_id, UsageRecordRow.completion_tokens)
        ).all()
    return {request_id: tokens for request_id, tokens in found}


def row_count(db: Database) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(UsageRecordRow)) or 0)


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def records(n: int, prefix: str = "req") -> list[UsageRecord]:
    return [usage(request_id=f"{prefix}-{i}", completion_tokens=i + 1) for i in range(n)]


class FlakyLedger:
    """Raises ``failures`` times, then writes through the real ledger."""

    def __init__(self, ledger: Ledger, failures: int) -> None:
        self.ledger = ledger
        self.failures = failures
        self.calls = 0

    def apply(self, batch: Sequence[PricedUsage]) -> int:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database is down")
        return self.ledger.apply(batch)


class GatedLedger:
    """Blocks every apply until ``gate`` is set, then writes through the real ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.gate = threading.Event()

    def apply(self, batch: Sequence[PricedUsage]) -> int:
        self.gate.wait(30)
        return self.ledger.apply(batch)


class DownLedger:
    def apply(self, batch: Sequence[PricedUsage]) -> int:
        raise ConnectionError("database is down")


@pytest.fixture
def ledger(billing_db: Database, make_account: MakeAccount) -> Ledger:
    make_account("acme")
    return Ledger(billing_db, FakeClock(), NoListener())


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def ingest(ledger: Ledger, spool_dir: Path) -> Iterator[UsageIngest]:
    sink = UsageIngest(PRICER, ledger, spool_dir, batch_size=50, max_delay_s=0.005)
    sink.start()
    yield sink
    sink.close()


def test_n_records_become_exactly_n_rows_and_the_spool_empties(
    ingest: UsageIngest, billing_db: Database, spool_dir: Path
) -> None:
    sent = records(437)
    for record in sent:
        ingest.record(record)
    assert ingest.flush(10)
    assert rows(billing_db) == {r.request_id: r.completion_tokens for r in sent}
    assert (ingest.recorded, ingest.committed, ingest.written) == (437, 437, 437)
    assert ingest.failed_batches == 0
    assert ingest.queue_depth == 0
    ingest.close()
    assert spool_files(spool_dir) == []


def test_segments_are_deleted_as_soon_as_they_are_committed(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    sink = UsageIngest(PRICER, ledger, spool_dir, batch_size=10, segment_records=25)
    sink.start()
    try:
        for record in records(110):
            sink.record(record)
        assert sink.flush(10)
        assert row_count(billing_db) == 110
        # 4 full segments committed and deleted; the current one (10 lines) stays, locked.
        (left,) = spool_files(spool_dir)
        assert len(left.read_bytes().splitlines()) == 10
    finally:
        sink.close()
    assert spool_files(spool_dir) == []


def test_start_replays_a_dead_process_segment_writing_missing_records_once(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    sent = records(10, "crash")
    assert ledger.apply([PRICER.price(r) for r in sent[:4]]) == 4  # committed before the crash
    spool_dir.mkdir()
    segment = spool_dir / f"usage-999999-deadbeef-000001{SUFFIX}"  # no live pid, no lock
    segment.write_bytes(b"".join(encode(r) for r in sent))
    sink = UsageIngest(PRICER, ledger, spool_dir)
    sink.start()  # returns after the replay
    try:
        assert rows(billing_db) == {r.request_id: r.completion_tokens for r in sent}
        assert (sink.recovered, sink.written) == (10, 6)
        assert spool_files(spool_dir) == []
        sink.record(sent[0])  # a replay of a known id writes nothing
        assert sink.flush(10)
        assert row_count(billing_db) == 10
    finally:
        sink.close()


def test_a_segment_a_live_process_holds_is_left_alone(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    live = Spool(spool_dir)
    live.append(encode(usage(request_id="theirs")))
    sink = UsageIngest(PRICER, ledger, spool_dir)
    sink.start()
    try:
        assert row_count(billing_db) == 0
        assert len(spool_files(spool_dir)) == 1
    finally:
        sink.close()
        live.release_all()


def test_a_killed_process_loses_nothing(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    """A real process records 300 usages its database never takes, then SIGKILLs itself."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from firebox.billing.ingest import UsageIngest
        from firebox.billing.overrides import NoOverrides
        from firebox.billing.price_book import PriceBook
        from firebox.billing.pricing import Pricer
        from tests.billing.conftest import usage

        class Hang:
            def apply(self, batch):
                threading.Event().wait()

        sink = UsageIngest(Pricer(PriceBook.load(), NoOverrides()), Hang(),
                           Path({str(spool_dir)!r}), segment_records=100)
        sink.start()
        for i in range(300):
            sink.record(usage(request_id=f"killed-{{i}}", completion_tokens=i + 1))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120, check=False)
    assert done.returncode == -9
    assert len(spool_files(spool_dir)) == 3
    sink = UsageIngest(PRICER, ledger, spool_dir)
    sink.start()
    try:
        assert rows(billing_db) == {f"killed-{i}": i + 1 for i in range(300)}
        assert sink.recovered == 300
        assert spool_files(spool_dir) == []
    finally:
        sink.close()


def test_database_errors_are_retried_until_the_batch_commits(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    flaky = FlakyLedger(ledger, failures=3)
    sink = UsageIngest(PRICER, flaky, spool_dir, batch_size=100, retry_max_s=0.05)
    sink.start()
    try:
        for record in records(250):
            sink.record(record)
        assert sink.flush(20)
        assert row_count(billing_db) == 250
        assert sink.failed_batches == 3
        assert sink.written == 250
    finally:
        sink.close()


def test_a_database_down_at_close_leaves_the_spool_for_the_next_start(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    down = UsageIngest(PRICER, DownLedger(), spool_dir, retry_max_s=0.02)
    down.start()
    for record in records(40):
        down.record(record)
    assert not down.flush(0.2)
    deadline = time.monotonic() + 60  # the writer tries (and fails) at least once first
    while down.failed_batches < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    down.close(timeout_s=0.2)
    assert down.failed_batches >= 1
    assert len(spool_files(spool_dir)) == 1
    assert row_count(billing_db) == 0
    up = UsageIngest(PRICER, ledger, spool_dir)
    up.start()
    try:
        assert row_count(billing_db) == 40
        assert up.recovered == 40
    finally:
        up.close()
    assert spool_files(spool_dir) == []


def test_a_full_queue_blocks_briefly_then_spills_to_the_spool_only(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    gated = GatedLedger(ledger)
    sink = UsageIngest(
        PRICER, gated, spool_dir, batch_size=2, max_delay_s=0.001, queue_limit=5, block_s=0.01
    )
    sink.start()
    try:
        for record in records(30):
            sink.record(record)
            assert sink.queue_depth <= 5
        # the writer holds one batch (at most 2), the queue 5; the rest waited, and all
        # but those that found room while waiting spilled
        assert sink.backpressure_waits >= 23
        assert 20 <= sink.spilled <= sink.backpressure_waits
        gated.gate.set()
        assert sink.flush(20)
        assert sink.committed == 30
        assert row_count(billing_db) == 30
        assert sink.written == 30
    finally:
        gated.gate.set()
        sink.close()
    assert spool_files(spool_dir) == []


def test_record_never_raises(ledger: Ledger, spool_dir: Path, billing_db: Database) -> None:
    sink = UsageIngest(PRICER, ledger, spool_dir)
    sink.start()
    try:
        sink.record(usage(request_id="unpriced", price_class=None))
        sink.record(usage(request_id="bad-gpu", kind="deployment", gpu_type="TPU"))
        assert sink.pricing_errors == 2
        sink.record(usage(request_id="priced", completion_tokens=5))
        assert sink.flush(10)
        assert rows(billing_db) == {"priced": 5}
        assert sink.recorded == 1
    finally:
        sink.close()


def test_a_failing_spool_disk_still_bills_the_record(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    sink = UsageIngest(PRICER, ledger, spool_dir)
    sink.start()
    try:
        spool_dir.rmdir()  # the segment cannot be created: os.open raises
        sink.record(usage(request_id="no-disk", completion_tokens=3))
        assert sink.spool_errors == 1
        assert sink.flush(10)
        assert rows(billing_db) == {"no-disk": 3}
    finally:
        sink.close()


def test_records_before_start_are_kept_and_written_after_it(
    ledger: Ledger, spool_dir: Path, billing_db: Database
) -> None:
    sink = UsageIngest(PRICER, ledger, spool_dir)
    for record in records(5):
        sink.record(record)
    sink.start()  # its own segment is locked: not mistaken for an orphan
    try:
        assert sink.flush(10)
        assert row_count(billing_db) == 5
        assert sink.recovered == 0
    finally:
        sink.close()
