"""The usage spool: lines round-trip, segments roll, orphans are claimed only when unlocked."""

from __future__ import annotations

import fcntl
import os
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from firebox.billing.spool import SUFFIX, Spool, decode, encode
from tests.billing.conftest import usage


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_record_round_trips_through_one_line() -> None:
    record = usage(
        request_id="req-rt",
        time=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2))),
        prompt_tokens=12,
        completion_tokens=34,
        cached_prompt_tokens=5,
        adapter="acct/a",
        outcome="cancelled",
        time_to_first_token_ms=12.5,
        explicit_price_micros=7,
        gpu_type="A100_80GB",
        gpu_milliseconds=9,
    )
    line = encode(record)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert b'"time":"2026-03-04T05:06:07.891011+02:00"' in line  # RFC3339
    back = decode(line)
    assert back == record
    assert back.time.astimezone(UTC) == datetime(2026, 3, 4, 3, 6, 7, 891011, tzinfo=UTC)


def test_unknown_fields_are_ignored_and_torn_lines_refused() -> None:
    line = encode(usage(request_id="req-x"))
    assert decode(line[:-1].replace(b"}", b',"future":1}')).request_id == "req-x"
    for bad in (line[: len(line) // 2], b"[1,2]\n", b'{"request_id":"r"}\n'):
        with pytest.raises(ValueError):
            decode(bad)


def test_segments_roll_every_n_records_and_keep_every_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_records=3)
    records = [usage(request_id=f"r{i}") for i in range(7)]
    segments = [spool.append(encode(r)) for r in records]
    assert [s.appended for s in dict.fromkeys(segments)] == [3, 3, 1]
    assert [s.sealed for s in dict.fromkeys(segments)] == [True, True, False]
    names = files(tmp_path)
    assert len(names) == 3
    assert all(n.startswith(f"usage-{os.getpid()}-") and n.endswith(SUFFIX) for n in names)
    read = [r for s in dict.fromkeys(segments) for r in s.records()[0]]
    assert [r.request_id for r in read] == [f"r{i}" for i in range(7)]
    assert spool.appended_total == 7
    assert [s.appended for s in spool.settled()] == []  # nothing committed yet
    segments[0].committed = 3
    assert spool.settled() == [segments[0]]
    spool.delete(segments[0])
    assert len(files(tmp_path)) == 2
    spool.release_all()
    assert len(files(tmp_path)) == 2  # released, not deleted: a later start replays them


def test_seal_current_starts_a_new_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.append(encode(usage()))
    spool.seal_current()
    second = spool.append(encode(usage()))
    assert first is not second
    assert first.sealed
    assert not second.sealed
    assert spool.segments() == [first, second]
    spool.release_all()


def test_a_live_owners_segments_are_never_claimed(tmp_path: Path) -> None:
    owner = Spool(tmp_path)
    owner.append(encode(usage()))
    other = Spool(tmp_path)
    assert other.claim_orphans() == []  # flock is per open file: even in one process
    assert owner.claim_orphans() == []  # nor by the owner itself
    owner.release_all()  # the owner is gone: its lock with it
    claimed = other.claim_orphans()
    assert [s.appended for s in claimed] == [1]
    assert claimed[0].spilled == 1
    assert Spool(tmp_path).claim_orphans() == []  # now the claimer holds it
    claimed[0].delete()
    assert files(tmp_path) == []


def test_a_segment_without_lock_is_an_orphan_even_if_written_by_hand(tmp_path: Path) -> None:
    path = tmp_path / f"usage-999999-dead-000001{SUFFIX}"
    path.write_bytes(encode(usage(request_id="a")) + b"\n" + encode(usage(request_id="b")))
    held = tmp_path / f"usage-1-live-000001{SUFFIX}"
    held.write_bytes(encode(usage(request_id="c")))
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # some live process holds this one
    try:
        claimed = Spool(tmp_path).claim_orphans()
        assert [s.path.name for s in claimed] == [path.name]
        records, corrupt = claimed[0].records()
        assert [r.request_id for r in records] == ["a", "b"]
        assert corrupt == 0
    finally:
        os.close(fd)


def test_torn_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / f"usage-999999-dead-000001{SUFFIX}"
    line = encode(usage(request_id="ok"))
    path.write_bytes(line + line[:20])
    (segment,) = Spool(tmp_path).claim_orphans()
    records, corrupt = segment.records()
    assert [r.request_id for r in records] == ["ok"]
    assert corrupt == 1


def test_stale_half_created_segments_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "usage-999999-dead-000001.new"
    fresh = tmp_path / "usage-999998-dead-000001.new"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert Spool(tmp_path).claim_orphans() == []
    assert files(tmp_path) == [fresh.name]


def test_fsync_mode_writes_the_same_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    segment = spool.append(encode(usage(request_id="durable")))
    assert [r.request_id for r in segment.records()[0]] == ["durable"]
    spool.release_all()
