"""Fireworks' batchInferenceJobs through the unmodified ``fireworks-ai`` SDK, in process.

An input dataset of 50 OpenAI batch lines, uploaded and validated by the
datasets slice; the job runs them on the job's model with its inference
parameters, and writes an output dataset with one result line per input, in
input order, each billed as a ``batch`` record at the batch price.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fireworks import Fireworks
from fireworks import NotFoundError as FireworksNotFound

from firebox.clock import FakeClock
from firebox.store.database import Database
from tests.finetune.batch_support import (
    TINY,
    App,
    ThroughTestClient,
    app,
    batch_lines,
    jsonl,
    usage_rows,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path, database: Database, clock: FakeClock) -> Iterator[App]:
    yield from app(tmp_path, database, clock)


def test_a_job_of_50_lines_writes_an_output_dataset_in_input_order(served: App) -> None:
    fw = Fireworks(
        api_key=served.key,
        account_id="demo",
        base_url="http://testserver",
        http_client=httpx.Client(transport=ThroughTestClient(served.client)),
        max_retries=0,
    )
    lines = batch_lines(50)
    for line in lines:
        del line["body"]["max_tokens"]  # the job's inference parameters fill it in
        line["body"]["model"] = "accounts/fireworks/models/not-this-one"  # the job's model wins
    fw.datasets.create(dataset_id="requests", dataset={"user_uploaded": {}})
    fw.datasets.upload("requests", file=("requests.jsonl", jsonl(lines)))
    assert fw.datasets.get("requests").state == "READY"

    traffic = served.services.inference.traffic
    traffic.enter()  # an interactive request in flight: the job waits, its datasets in use
    job = fw.batch_inference_jobs.create(
        batch_inference_job_id="job1",
        model=TINY,
        input_dataset_id="accounts/demo/datasets/requests",
        output_dataset_id="accounts/demo/datasets/results",
        inference_parameters={"max_tokens": 3, "temperature": 0},
        display_name="fifty",
    )
    assert job.name == "accounts/demo/batchInferenceJobs/job1"
    assert job.state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    again = served.client.post(
        "/v1/accounts/demo/batchInferenceJobs?batchInferenceJobId=job1",
        json={"model": TINY, "inputDatasetId": "requests"},
        headers=served.headers,
    )
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    in_use = served.client.delete("/v1/accounts/demo/datasets/requests", headers=served.headers)
    assert in_use.status_code == 400 and in_use.json()["error"]["code"] == "dataset_in_use"
    traffic.leave()

    def finished() -> object:
        current = fw.batch_inference_jobs.get("job1")
        return current if current.state == "JOB_STATE_COMPLETED" else None

    done = wait_for(finished, what="the batch job")
    progress = done.job_progress
    assert progress is not None
    assert (progress.total_input_requests, progress.successfully_processed_requests) == (50, 50)
    assert (progress.failed_requests, progress.percent) == (0, 100)
    output = fw.datasets.get("results")
    assert (output.state, output.example_count) == ("READY", "50")
    urls = fw.datasets.get_download_endpoint("results").filename_to_signed_urls or {}
    (url,) = urls.values()
    text = served.client.get(url).text
    results = [json.loads(x) for x in text.splitlines()]
    assert [r["custom_id"] for r in results] == [f"q-{i}" for i in range(50)]
    for result in results:
        body = result["response"]["body"]
        assert body["model"] == TINY and body["usage"]["completion_tokens"] <= 3
    rows = usage_rows(served.services, "batch-")
    assert len(rows) == 50 and {(r.kind, r.model) for r in rows} == {("batch", TINY)}
    assert int(progress.output_tokens or 0) == sum(r.completion_tokens for r in rows)

    assert [j.name for j in fw.batch_inference_jobs.list()] == [job.name]
    fw.batch_inference_jobs.delete("job1")
    with pytest.raises(FireworksNotFound):
        fw.batch_inference_jobs.get("job1")


def test_create_refuses_what_cannot_run_with_a_clear_code(served: App) -> None:
    post = "/v1/accounts/demo/batchInferenceJobs?batchInferenceJobId="
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    served.client.post(
        "/v1/accounts/demo/datasets",
        json={"datasetId": "chat", "dataset": {"userUploaded": {}}},
        headers=served.headers,
    )
    served.client.post(
        "/v1/accounts/demo/datasets/chat:upload",
        files={"file": ("c.jsonl", (json.dumps(chat) + "\n") * 3)},
        headers=served.headers,
    )
    cases = [
        ("a", {"model": TINY}, 400, "invalid_argument"),
        ("b", {"model": "accounts/demo/models/nope", "inputDatasetId": "x"}, 404, None),
        ("c", {"model": TINY, "inputDatasetId": "missing"}, 404, "dataset_not_found"),
        ("d", {"model": TINY, "inputDatasetId": "chat"}, 400, "invalid_dataset"),
        ("Bad_Id", {"model": TINY, "inputDatasetId": "chat"}, 400, "invalid_id"),
        ("e", {"model": TINY, "inputDatasetId": "chat", "bogus": 1}, 400, None),
    ]
    for job_id, body, status, code in cases:
        answer = served.client.post(post + job_id, json=body, headers=served.headers)
        assert answer.status_code == status, (job_id, answer.text)
        if code:
            assert answer.json()["error"]["code"] == code, (job_id, answer.text)
