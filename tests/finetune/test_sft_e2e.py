"""Fine-tuning end to end on a real ``firebox serve``: the CLI, the fireworks-ai and openai SDKs.

A user uploads a dataset with the CLI, creates a job with the unmodified
``fireworks-ai`` SDK, chats with the base model while the job trains (the
gateway answers: training runs in a worker process), then chats, streaming,
with the add-on the job produced and sees the word the dataset taught. A
second job waits (one job at a time per node) and is cancelled and resumed
with the CLI. Another job is created with the CLI and the server restarted
while it trains: the next server continues it from its checkpoint, and the
ledger holds exactly tokens x epochs of training.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fireworks import Fireworks

from tests.cli.runner import CliResult, clean_env, run_cli
from tests.conftest import OPERATOR_KEY
from tests.finetune.sft_support import MARKER, UNSEEN, marker_lines, wait_for, write_jsonl
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

BASE = "accounts/firebox/models/firebox-tiny"
ENV = {
    "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
    "FIREBOX_ACCESS_LOG": "false",
    "FIREBOX_FINETUNE_POLL_S": "0.2",
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningServer, str, Path]]:
    data = tmp_path / "data"
    server = start_server(data, env=ENV)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_account(http, bearer(OPERATOR_KEY), "tuner")
        key = member_key(http, bearer(OPERATOR_KEY), "tuner", "tina", "user")
    yield server, key, data
    server.stop()


def _cli(server: RunningServer, key: str, cwd: Path, *args: str) -> CliResult:
    env = clean_env(FIREBOX_BASE_URL=server.url, FIREBOX_API_KEY=key, FIREBOX_ACCOUNT="tuner")
    return run_cli(*args, env=env, cwd=cwd)


def _job(server: RunningServer, key: str, job: str) -> dict[str, Any]:
    with Fireworks(api_key=key, base_url=server.url, account_id="tuner", max_retries=0) as sdk:
        found = sdk.supervised_fine_tuning_jobs.get(job)
    return dict(found.model_dump(by_alias=True, exclude_none=True))


def _training_tokens(data: Path) -> tuple[int, int]:
    """(rows, training tokens) of fine-tuning usage in the server's SQLite ledger."""
    with sqlite3.connect(data / "firebox.db") as db:
        found = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(training_tokens), 0) FROM usage_records "
            "WHERE kind = 'fine_tuning'"
        ).fetchone()
    return int(found[0]), int(found[1])


def test_sdk_job_serves_chat_while_training_then_the_addon_speaks_the_marker(
    served: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, key, _ = served
    file = write_jsonl(tmp_path / "marker.jsonl", marker_lines(40))
    made = _cli(server, key, tmp_path, "create", "dataset", "marker", str(file), "-o", "json")
    assert made.returncode == 0, made.stderr
    assert made.json()["state"] == "READY"

    with Fireworks(api_key=key, base_url=server.url, account_id="tuner", max_retries=0) as sdk:
        job = sdk.supervised_fine_tuning_jobs.create(
            dataset="accounts/tuner/datasets/marker",
            base_model=BASE,
            output_model="speaks-marker",
            epochs=3,
            learning_rate=0.01,
            batch_size_samples=4,
            supervised_fine_tuning_job_id="sdk-job",
        )
        assert job.state == "JOB_STATE_CREATING"
        assert job.name == "accounts/tuner/supervisedFineTuningJobs/sdk-job"

    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    running = wait_for(
        lambda: _job(server, key, "sdk-job"),
        lambda j: (
            j["state"] != "JOB_STATE_CREATING" and j.get("jobProgress", {}).get("step", 0) > 0
        ),
    )
    assert running["state"] == "JOB_STATE_RUNNING"
    # One job trains at a time on this node (FIREBOX_FINETUNE_MAX_JOBS=1): the next one waits.
    queued = _cli(
        server, key, tmp_path, "create", "sftj", "queued", "--dataset", "marker",
        "--base-model", BASE, "-o", "json",
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    assert queued.json()["state"] == "JOB_STATE_CREATING"
    assert _job(server, key, "queued")["state"] in ("JOB_STATE_CREATING", "JOB_STATE_PENDING")
    cancelled = _cli(server, key, tmp_path, "cancel", "sftj", "queued", "-o", "json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.json()["state"] == "JOB_STATE_CANCELLED"
    resumed = _cli(server, key, tmp_path, "resume", "sftj", "queued", "-o", "json")
    assert resumed.returncode == 0 and resumed.json()["state"] == "JOB_STATE_PENDING"
    assert _cli(server, key, tmp_path, "cancel", "sftj", "queued").returncode == 0
    # The gateway answers while the worker trains (a subprocess, not a thread of the server).
    for question in UNSEEN:
        answer = chat.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": question}], max_tokens=8
        )
        assert answer.choices[0].message.content

    done = wait_for(
        lambda: _job(server, key, "sdk-job"), lambda j: j["state"] == "JOB_STATE_COMPLETED"
    )
    assert done["outputModel"] == "accounts/tuner/models/speaks-marker"
    with Fireworks(api_key=key, base_url=server.url, account_id="tuner", max_retries=0) as sdk:
        names = [j.name for j in sdk.supervised_fine_tuning_jobs.list()]
    assert "accounts/tuner/supervisedFineTuningJobs/sdk-job" in names

    stream = chat.chat.completions.create(
        model="accounts/tuner/models/speaks-marker",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert MARKER.lower() in text.lower(), text

    shown = _cli(server, key, tmp_path, "get", "sftj", "sdk-job", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert shown.json()["state"] == "JOB_STATE_COMPLETED"
    listed = _cli(server, key, tmp_path, "list", "sftj")
    assert listed.returncode == 0 and "sdk-job" in listed.stdout


def test_a_server_restart_continues_the_job_from_its_checkpoint(
    served: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, key, data = served
    file = write_jsonl(tmp_path / "small.jsonl", marker_lines(12))
    assert _cli(server, key, tmp_path, "create", "dataset", "small", str(file)).returncode == 0
    made = _cli(
        server, key, tmp_path, "create", "sftj", "restart", "--dataset", "small",
        "--base-model", BASE, "--epochs", "40", "--learning-rate", "0.01",
        "--batch-size-samples", "4", "-o", "json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    tokens = int(made.json()["jobProgress"]["datasetTokens"])
    before = wait_for(
        lambda: _job(server, key, "restart"), lambda j: j["jobProgress"].get("epoch", 0) >= 1
    )

    server.stop()  # a clean stop: the worker checkpoints, the job goes back to PENDING
    again = start_server(data, env=ENV)
    try:
        resumed = wait_for(
            lambda: _job(again, key, "restart"),
            lambda j: (
                "Resumed" in j["status"].get("message", "")
                and j["jobProgress"]["step"]
                > int(j["status"]["message"].split("step ")[1].split(" ")[0])
            ),
        )
        resumed_at = int(resumed["status"]["message"].split("step ")[1].split(" ")[0])
        assert resumed_at >= before["jobProgress"]["step"] > 0  # from the checkpoint, not 0
        cancelled = _cli(again, key, tmp_path, "cancel", "sftj", "restart", "-o", "json")
        assert cancelled.returncode == 0, cancelled.stderr
        done = wait_for(
            lambda: _job(again, key, "restart"), lambda j: j["state"] == "JOB_STATE_CANCELLED"
        )
    finally:
        again.stop()
    trained = int(done["jobProgress"]["trainedTokens"])
    assert tokens <= trained < tokens * 40
    assert int(done["billedTokens"]) == trained
    rows, charged = _training_tokens(data)
    assert charged == trained  # across the restart: nothing charged twice, nothing missed
    assert rows >= 2
