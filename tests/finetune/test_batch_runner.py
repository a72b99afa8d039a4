"""The batch runner: it yields to interactive traffic, survives a restart, fails lines alone.

In process on firebox-tiny, through the OpenAI batch shape (its input file is
taken as sent, so bad lines reach the runner).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from firebox.clock import FakeClock
from firebox.finetune.batch_models import BatchJobRow, BatchResultRow
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.finetune.batch_support import App, app, batch_lines, jsonl, usage_rows, wait_for
from tests.support.api import ok

pytestmark = pytest.mark.slow


def _submit(served: App, data: bytes) -> str:
    upload = served.client.post(
        "/v1/files",
        files={"file": ("in.jsonl", data)},
        data={"purpose": "batch"},
        headers=served.headers,
    )
    body = {
        "input_file_id": ok(upload)["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    return str(ok(served.client.post("/v1/batches", json=body, headers=served.headers))["id"])


def _batch(served: App, batch_id: str) -> dict[str, object]:
    return ok(served.client.get(f"/v1/batches/{batch_id}", headers=served.headers))


def _job(database: Database, batch_id: str) -> BatchJobRow:
    with database.transaction() as session:
        row = session.scalars(select(BatchJobRow).where(BatchJobRow.job_id == batch_id)).one()
        session.expunge(row)
        return row


def _lines(served: App, file_id: object) -> list[dict[str, object]]:
    content = served.client.get(f"/v1/files/{file_id}/content", headers=served.headers)
    return [json.loads(x) for x in content.text.splitlines()]


def test_interactive_traffic_holds_batch_lines_and_a_restart_continues_where_it_stopped(
    tmp_path: Path, database: Database, clock: FakeClock
) -> None:
    lines = batch_lines(12)
    first = app(tmp_path, database, clock, batch_concurrency=1, batch_lull_max_wait_s=600)
    served = next(first)
    traffic = served.services.inference.traffic
    batch_id = _submit(served, jsonl(lines))
    wait_for(lambda: _job(database, batch_id).completed >= 2, what="two lines")
    traffic.enter()  # an interactive request is in flight: no batch line may start
    held = _job(database, batch_id).completed
    runner = served.services.batch.runner
    started = runner.lines_run
    # Lines finish only if they had started (concurrency 1: at most one); then none starts.
    wait_for(lambda: runner.lines_run <= started + 1 and traffic.in_flight == 1, what="a hold")
    with pytest.raises(AssertionError):
        wait_for(lambda: runner.lines_run > started + 1, timeout_s=2, what="a line")
    assert _job(database, batch_id).completed <= held + 1 < 12
    with pytest.raises(StopIteration):
        next(first)  # the server stops mid-job (its runner releases the job)
    stopped = _job(database, batch_id)
    assert stopped.state == "JOB_STATE_RUNNING" and stopped.lease_owner == ""

    second = app(tmp_path, database, clock, served.key)
    served = next(second)
    done = wait_for(
        lambda: (b := _batch(served, batch_id))["status"] == "completed" and b, what="the batch"
    )
    output = _lines(served, done["output_file_id"])
    assert [o["custom_id"] for o in output] == [f"q-{i}" for i in range(12)]
    assert served.services.batch.runner.lines_run <= 12 - stopped.completed
    rows = usage_rows(served.services, "batch-")
    assert sorted(r.request_id.rsplit("-", 1)[1] for r in rows) == sorted(
        str(i) for i in range(12)
    )  # every line billed once, across the restart
    with database.transaction() as session:  # written out: the per-line rows are gone
        assert session.scalar(select(func.count()).select_from(BatchResultRow)) == 0
    with pytest.raises(StopIteration):
        next(second)


def test_bad_lines_fail_alone_and_cancel_keeps_what_was_done(
    tmp_path: Path, database: Database, clock: FakeClock
) -> None:
    gen = app(tmp_path, database, clock, batch_concurrency=1, batch_lull_max_wait_s=600)
    served = next(gen)
    good = batch_lines(4)
    bad_model = {**good[1], "custom_id": "bad-model"}
    bad_model["body"] = {**good[1]["body"], "model": "accounts/demo/models/missing"}
    streaming = {**good[2], "custom_id": "streaming"}
    streaming["body"] = {**good[2]["body"], "stream": True}
    data = (
        jsonl([good[0]])
        + b"{not json\n\n"
        + jsonl([bad_model, streaming, good[3]])
        + jsonl([{"custom_id": "wrong-url", "url": "/v1/embeddings", "body": {}}])
    )
    batch_id = _submit(served, data)
    done = wait_for(
        lambda: (b := _batch(served, batch_id))["status"] == "completed" and b, what="the batch"
    )
    assert done["request_counts"] == {"total": 6, "completed": 2, "failed": 4}
    assert [o["custom_id"] for o in _lines(served, done["output_file_id"])] == ["q-0", "q-3"]
    errors = _lines(served, done["error_file_id"])
    assert [e["custom_id"] for e in errors] == [None, "bad-model", "streaming", "wrong-url"]
    codes = [e["error"]["code"] for e in errors]  # type: ignore[index]
    assert codes == [
        "invalid_batch_line",
        "model_not_found",
        "invalid_batch_line",
        "invalid_batch_line",
    ]
    assert len(usage_rows(served.services, "batch-")) == 2  # failed lines cost nothing

    # Cancelled while held by interactive traffic: no new line starts, what ran is kept.
    served.services.inference.traffic.enter()
    second = _submit(served, jsonl(batch_lines(5)))
    cancelled = ok(served.client.post(f"/v1/batches/{second}/cancel", headers=served.headers))
    assert cancelled["status"] in ("cancelling", "cancelled")
    final = wait_for(
        lambda: (b := _batch(served, second))["status"] == "cancelled" and b, what="the cancel"
    )
    counts = final["request_counts"]
    assert counts["total"] == 5 and counts["completed"] + counts["failed"] <= 1  # type: ignore[index]
    missing = served.client.get("/v1/batches/batch_nope", headers=served.headers)
    assert missing.status_code == 404

    # Refused for money or suspension (a 402): the job stops and fails with that code.
    served.services.inference.traffic.leave()
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    blocked = served.client.post("/v1/accounts/demo:block", json={"reason": "t"}, headers=operator)
    assert blocked.status_code == 200, blocked.text
    third = _submit(served, jsonl(batch_lines(3)))
    failed = wait_for(
        lambda: (b := _batch(served, third))["status"] == "failed" and b, what="the refusal"
    )
    assert failed["errors"]["data"][0]["code"] == "blocked"  # type: ignore[index]
    assert failed["request_counts"]["completed"] == 0  # type: ignore[index]
    with pytest.raises(StopIteration):
        next(gen)
