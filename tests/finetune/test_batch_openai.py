"""OpenAI's batch API through the ``openai`` package, in process, on firebox-tiny.

A batch of 50 chat requests: its output file holds every answer in input
order, identical to the interactive answer to the same greedy request; the
ledger holds one ``batch`` record per line at half the serverless price; and
none of it counted against the account's rate limit (5 requests a minute here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from firebox.billing.money import divide_half_even
from firebox.clock import FakeClock
from firebox.money_state import format_usd
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.finetune.batch_support import App, app, batch_lines, jsonl, usage_rows, wait_for
from tests.support.api import ok

pytestmark = pytest.mark.slow

TERMINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture
def served(tmp_path: Path, database: Database, clock: FakeClock) -> Iterator[App]:
    yield from app(tmp_path, database, clock)


def _openai(served: App) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1",
        api_key=served.key,
        http_client=served.client,
        max_retries=0,
    )


def _amount(unit: int, prompt: int, cached: int, completion: int, share: int = 100) -> int:
    """SPEC §2 price of the counts at ``share``% of ``unit`` per 1M, cached prompt tokens at 50%."""
    tokens = (prompt - cached + completion) * 100 + cached * 50
    return divide_half_even(tokens * unit * share, 10**10)


def test_a_batch_of_50_answers_in_order_at_half_price_outside_the_rate_limit(
    served: App,
) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    limits = {"rateLimitRequestsPerMinute": 5}
    ok(served.client.patch("/v1/accounts/demo/limits", json=limits, headers=operator))
    client = _openai(served)
    lines = batch_lines(50)
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes) == ("batch", len(jsonl(lines)))
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status in ("validating", "in_progress")

    def finished() -> openai.types.Batch | None:
        current = client.batches.retrieve(batch.id)
        return current if current.status in TERMINAL else None

    done = wait_for(finished, what="the batch")
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (50, 50)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert done.output_file_id is not None
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"q-{i}" for i in range(50)]
    assert all(o["error"] is None and o["response"]["status_code"] == 200 for o in output)
    assert [b.id for b in client.batches.list().data] == [batch.id]

    # The same greedy requests asked interactively: the same answers; the rate limit's
    # first request of the minute (the batch's 50 counted nothing).
    chat_rows = []
    for i in (0, 17, 49):
        raw = client.chat.completions.with_raw_response.create(
            **lines[i]["body"], extra_headers={"x-request-id": f"interactive-{i}"}
        )
        if i == 0:
            assert raw.headers["x-ratelimit-remaining-requests"] == "4"
        answer = raw.parse()
        body = output[i]["response"]["body"]
        assert body["choices"][0]["message"]["content"] == answer.choices[0].message.content
        chat_rows += usage_rows(served.services, f"interactive-{i}")

    rows = usage_rows(served.services, "batch-")
    assert len(rows) == 50 and {r.kind for r in rows} == {"batch"}
    assert len({r.request_id for r in rows}) == 50
    chat_unit = chat_rows[0].unit_price_micros
    assert chat_unit > 0 and all(r.unit_price_micros * 2 == chat_unit for r in rows)
    for row in rows:  # exactly half of the chat price, rounded once (cached tokens at 50%)
        counts = (row.prompt_tokens, row.cached_prompt_tokens, row.completion_tokens)
        assert row.amount_micros == _amount(chat_unit, *counts, share=50)
        assert row.amount_micros <= (_amount(chat_unit, *counts) + 1) // 2
    report = ok(served.client.get("/v1/accounts/demo/usage?groupBy=kind", headers=served.headers))
    (batch_group,) = [g for g in report["groups"] if g["key"] == "batch"]
    assert batch_group["requests"] == 50
    assert batch_group["amount"] == format_usd(sum(r.amount_micros for r in rows))
    usage = done.usage
    assert usage is not None
    assert usage.input_tokens == sum(r.prompt_tokens for r in rows)
    assert usage.output_tokens == sum(r.completion_tokens for r in rows)
